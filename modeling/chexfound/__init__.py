from .configuration_chexfound import CHEXFOUND_PRESETS, CheXFoundConfig
from .configuration_glori import GLoRIConfig
from .modeling_chexfound import CheXFoundModel
from .modeling_glori import GLoRIForMultiLabel
from .pipeline_cxr_classification import CXRClassificationPipeline
from .pipeline_cxr_feature_extraction import CXRFeatureExtractionPipeline

__all__ = [
    "CHEXFOUND_PRESETS",
    "CXRClassificationPipeline",
    "CXRFeatureExtractionPipeline",
    "CheXFoundConfig",
    "CheXFoundModel",
    "GLoRIConfig",
    "GLoRIForMultiLabel",
]

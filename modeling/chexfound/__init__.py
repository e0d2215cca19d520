from .configuration_chexfound import CHEXFOUND_PRESETS, CheXFoundConfig
from .configuration_glori import GLoRIConfig
from .modeling_chexfound import CheXFoundModel
from .modeling_glori import GLoRIForMultiLabel

__all__ = ["CHEXFOUND_PRESETS", "CheXFoundConfig", "CheXFoundModel", "GLoRIConfig", "GLoRIForMultiLabel"]

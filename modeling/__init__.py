"""Model families, registered with the transformers Auto classes on import (the library route).

Each folder is self-contained (it imports only its siblings and installed libraries), so
``save_pretrained`` copies working remote code next to the weights (the Hub route).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoProcessor

from ..processing.processing_clip import CXRCLIPProcessor
from .chexfound import CheXFoundConfig, CheXFoundModel, GLoRIConfig, GLoRIForMultiLabel
from .relaxed_clip import RelaxedCLIPConfig, RelaxedCLIPModel

AutoConfig.register(CheXFoundConfig.model_type, CheXFoundConfig, exist_ok=True)
AutoModel.register(CheXFoundConfig, CheXFoundModel, exist_ok=True)

AutoConfig.register(GLoRIConfig.model_type, GLoRIConfig, exist_ok=True)
AutoModelForImageClassification.register(GLoRIConfig, GLoRIForMultiLabel, exist_ok=True)

AutoConfig.register(RelaxedCLIPConfig.model_type, RelaxedCLIPConfig, exist_ok=True)
AutoModel.register(RelaxedCLIPConfig, RelaxedCLIPModel, exist_ok=True)
# Saved relaxed-CLIP folders carry an image processor + tokenizer pair.
AutoProcessor.register(RelaxedCLIPConfig, CXRCLIPProcessor, exist_ok=True)

__all__ = [
    "CheXFoundConfig",
    "CheXFoundModel",
    "GLoRIConfig",
    "GLoRIForMultiLabel",
    "RelaxedCLIPConfig",
    "RelaxedCLIPModel",
]

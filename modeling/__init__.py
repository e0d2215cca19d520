"""Model families. Each folder is self-contained (it imports only its siblings and installed libraries) and each of
its modules registers its own classes: `register_for_auto_class` for the Hub route (``save_pretrained`` copies
working remote code and writes ``auto_map``) and, in the installed package only, ``AutoConfig.register`` /
``AutoModel*.register`` / ``PIPELINE_REGISTRY`` for the library route. Importing a family registers it.
"""

from .chexfound import CheXFoundConfig, CheXFoundModel, GLoRIConfig, GLoRIForMultiLabel
from .relaxed_clip import RelaxedCLIPConfig, RelaxedCLIPModel

__all__ = [
    "CheXFoundConfig",
    "CheXFoundModel",
    "GLoRIConfig",
    "GLoRIForMultiLabel",
    "RelaxedCLIPConfig",
    "RelaxedCLIPModel",
]

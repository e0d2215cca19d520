"""Model families. Each folder is self-contained (imports only its siblings and installed
libraries) so that ``save_pretrained`` copies working remote code to the Hub."""

from transformers import AutoConfig, AutoModel

from .chexfound import CheXFoundConfig, CheXFoundModel

AutoConfig.register(CheXFoundConfig.model_type, CheXFoundConfig, exist_ok=True)
AutoModel.register(CheXFoundConfig, CheXFoundModel, exist_ok=True)

__all__ = ["CheXFoundConfig", "CheXFoundModel"]

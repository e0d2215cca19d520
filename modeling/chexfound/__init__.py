from .configuration_chexfound import CheXFoundConfig
from .modeling_chexfound import CheXFoundModel

__all__ = ["CheXFoundConfig", "CheXFoundModel"]

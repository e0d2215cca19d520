"""cxrfm: chest X-ray foundation models as Hugging Face models.

``import cxrfm`` registers every model family, the image processor, the CLIP processor and the
``cxr-classification`` / ``cxr-zero-shot-classification`` pipelines with transformers, so
``AutoModel.from_pretrained(folder)`` and ``pipeline(task, model=folder)`` resolve to the installed
code (the library route). Folders saved by cxrfm also carry their own code for
``trust_remote_code=True`` where cxrfm is not installed (the Hub route).
"""

__version__ = "0.1.0.dev0"

from .modeling import (  # noqa: E402
    CheXFoundConfig,
    CheXFoundModel,
    GLoRIConfig,
    GLoRIForMultiLabel,
    RelaxedCLIPConfig,
    RelaxedCLIPModel,
)
from .processing import CXRImageProcessor  # noqa: E402
from .processing.processing_clip import CXRCLIPProcessor  # noqa: E402
from . import pipelines as _pipelines  # noqa: E402,F401  (registers cxr-classification)
from .evaluation import zero_shot as _zero_shot  # noqa: E402,F401  (registers cxr-zero-shot-classification)

__all__ = [
    "CXRCLIPProcessor",
    "CXRImageProcessor",
    "CheXFoundConfig",
    "CheXFoundModel",
    "GLoRIConfig",
    "GLoRIForMultiLabel",
    "RelaxedCLIPConfig",
    "RelaxedCLIPModel",
    "__version__",
]

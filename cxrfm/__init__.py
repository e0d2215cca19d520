"""cxrfm: chest X-ray foundation models as Hugging Face models.

``import cxrfm`` registers every model family, the image processor, the CLIP processor and the
``cxr-classification`` / ``cxr-feature-extraction`` / ``cxr-zero-shot-classification`` pipelines with transformers
(each module registers its own classes), so ``AutoModel.from_pretrained(folder)`` and ``pipeline(task,
model=folder)`` resolve to the installed code without ``trust_remote_code`` (the library route). Folders saved by
cxrfm also carry their own code for ``trust_remote_code=True`` where cxrfm is not installed (the Hub route).
Dataset loaders, evaluation and recipes are imported on demand (``cxrfm.processing.datasets``,
``cxrfm.evaluation``, ``cxrfm.training``), not here.
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
from .modeling.mgca import MGCAConfig, MGCAForImageClassification, MGCAModel, MGCAProcessor  # noqa: E402
from .processing import CXRCLIPProcessor, CXRImageProcessor  # noqa: E402
from . import pipelines  # noqa: E402,F401  (the three task classes, each registered by its own module)

__all__ = [
    "CXRCLIPProcessor",
    "CXRImageProcessor",
    "CheXFoundConfig",
    "CheXFoundModel",
    "GLoRIConfig",
    "GLoRIForMultiLabel",
    "MGCAConfig",
    "MGCAForImageClassification",
    "MGCAModel",
    "MGCAProcessor",
    "RelaxedCLIPConfig",
    "RelaxedCLIPModel",
    "__version__",
]

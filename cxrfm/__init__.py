"""cxrfm: chest X-ray foundation models as Hugging Face models.

``cxrfm.modeling`` and ``cxrfm.processing`` register every model family with the transformers
Auto classes on import, so ``AutoModel.from_pretrained(folder)`` resolves to the installed code
(the library route); folders saved by cxrfm also carry their own code for ``trust_remote_code``
(the Hub route). The top-level names below are imported lazily so ``import cxrfm.evaluation``
does not pay for torch model code.
"""

import importlib

__version__ = "0.1.0.dev0"

_LAZY = {
    "CheXFoundConfig": "cxrfm.modeling",
    "CheXFoundModel": "cxrfm.modeling",
    "CXRImageProcessor": "cxrfm.processing",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrfm' has no attribute {name!r}")

"""Image and report processing: the CXR image processor, report text, dataset loaders.

Names are imported lazily so that ``cxrfm.processing.datasets`` and ``cxrfm.processing.text``
do not import the image-processing stack; accessing ``CXRImageProcessor`` registers it with
``AutoImageProcessor``.
"""

import importlib

_LAZY = {"CXRImageProcessor": ".image_processing_cxr"}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Image and report processing: the CXR image processor, the CLIP processor, report text, dataset loaders.

Importing this package registers ``CXRImageProcessor`` (``AutoImageProcessor``) and ``CXRCLIPProcessor``
(``AutoProcessor``); the dataset loaders are imported only when ``cxrfm.processing.datasets`` is.
"""

from .image_processing_cxr import CXRImageProcessor, load_cxr_image, read_dicom
from .processing_clip import CXRCLIPProcessor

__all__ = ["CXRCLIPProcessor", "CXRImageProcessor", "load_cxr_image", "read_dicom"]

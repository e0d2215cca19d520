"""Image and report processing: the CXR image processor, report text, dataset loaders.

Importing ``image_processing_cxr`` registers ``CXRImageProcessor`` with ``AutoImageProcessor``.
"""

from .image_processing_cxr import CXRImageProcessor, load_cxr_image, read_dicom

__all__ = ["CXRImageProcessor", "load_cxr_image", "read_dicom"]

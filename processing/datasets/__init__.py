"""`datasets` loaders for the public chest X-ray collections and the synthetic phantom set.

Every ``load_<collection>(root, ...)`` reads the collection's official on-disk layout and returns a
``datasets.DatasetDict`` (``streaming=True``: ``IterableDatasetDict``) with the features of
:func:`cxr_features` (label names in the ``positive_labels`` ClassLabel: :func:`get_label_names`).
Rows whose image (or report) is missing/unreadable are skipped and listed in the result's
``skipped`` attribute, or raise with ``strict=True``. DICOM and JSRT ``.IMG`` files decode through
``Image()`` via Pillow plugins that call the image processor's reader (see ``_io``).
"""

from ._common import (
    CHEXPERT_5,
    CHEXPERT_13,
    CHEXPERT_14,
    CXR_LT_40,
    cxr_features,
    get_label_names,
    is_frontal_view,
    normalize_view,
    patient_level_split,
)
from ._io import SkippedRows, register_cxr_image_plugins
from .chexpert import load_chexpert
from .covidx import load_covidx
from .cxr_lt import load_cxr_lt
from .jsrt import load_jsrt
from .mimic_cxr import load_mimic_cxr
from .nih import NIH_14, load_nih
from .openi import load_openi
from .padchest import load_padchest
from .phantom import load_phantom
from .plco import load_plco
from .rsna import load_rsna
from .shenzhen import load_montgomery, load_shenzhen
from .siim import decode_siim_rle, load_siim
from .vindr import VINDR_20, VINDR_28, load_vindr

__all__ = [
    "CHEXPERT_5",
    "CHEXPERT_13",
    "CHEXPERT_14",
    "CXR_LT_40",
    "NIH_14",
    "VINDR_20",
    "VINDR_28",
    "SkippedRows",
    "cxr_features",
    "decode_siim_rle",
    "get_label_names",
    "is_frontal_view",
    "normalize_view",
    "patient_level_split",
    "register_cxr_image_plugins",
    "load_chexpert",
    "load_covidx",
    "load_cxr_lt",
    "load_jsrt",
    "load_mimic_cxr",
    "load_montgomery",
    "load_nih",
    "load_openi",
    "load_padchest",
    "load_phantom",
    "load_plco",
    "load_rsna",
    "load_shenzhen",
    "load_siim",
    "load_vindr",
]

"""`datasets` loaders for the public chest X-ray collections, your own CSV, and the synthetic phantom set.

Every ``load_<collection>(root, ...)`` reads the collection's official on-disk layout and returns a
``datasets.DatasetDict`` (``streaming=True``: ``IterableDatasetDict``) with the features of
:func:`cxr_features` (label names in the ``positive_labels`` ClassLabel: :func:`get_label_names`).
Rows whose image (or report) is missing/unreadable are skipped and listed in the result's
``skipped`` attribute, or raise with ``strict=True``; a load in which every row is skipped raises
a ValueError naming the most common reason. ``labels_only=True`` gives the same rows without
images (label statistics; no file is checked). DICOM and JSRT ``.IMG`` files decode through
``Image()`` via Pillow plugins that call the image processor's reader (see ``_io``).

:data:`LOADERS` maps collection names to loaders that take one :class:`LoaderOptions`;
:func:`load_dataset_by_name` accepts a registered name or a CSV path (:func:`load_csv`).
:func:`ensure_cxr_schema` brings a plain ``DatasetDict`` (``image`` + ``labels``) to this schema.
Label sets live in :mod:`cxrfm.processing.labels` (re-exported here).
"""

from ..labels import CHEXPERT_5, CHEXPERT_13, CHEXPERT_14, CXR_LT_40, NIH_14, NIH_15, VINDR_20, VINDR_28
from ._common import (
    collate_labels,
    cxr_features,
    encode_labels,
    ensure_cxr_schema,
    get_label_names,
    is_frontal_view,
    label_mask,
    labels_to_tensor,
    normalize_view,
    patient_level_split,
    positive_label_ids,
)
from ._io import SkippedRows, build_dataset_dict, register_cxr_image_plugins
from .chexpert import load_chexpert
from .covidx import load_covidx
from .custom_csv import load_csv
from .cxr_lt import load_cxr_lt
from .jsrt import load_jsrt
from .mimic_cxr import load_mimic_cxr
from .nih import load_nih
from .object_cxr import OBJECT_CXR_LABELS, load_object_cxr, parse_object_cxr_annotation
from .openi import load_openi
from .padchest import load_padchest
from .phantom import load_phantom, make_phantom_files
from .plco import load_plco
from .registry import LOADERS, Loader, LoaderOptions, load_dataset_by_name
from .rsna import load_rsna
from .shenzhen import load_montgomery, load_shenzhen
from .siim import decode_siim_rle, load_siim
from .vindr import load_vindr

__all__ = [
    "CHEXPERT_5",
    "CHEXPERT_13",
    "CHEXPERT_14",
    "CXR_LT_40",
    "NIH_14",
    "NIH_15",
    "OBJECT_CXR_LABELS",
    "VINDR_20",
    "VINDR_28",
    "LOADERS",
    "Loader",
    "LoaderOptions",
    "SkippedRows",
    "build_dataset_dict",
    "collate_labels",
    "cxr_features",
    "decode_siim_rle",
    "encode_labels",
    "ensure_cxr_schema",
    "get_label_names",
    "is_frontal_view",
    "label_mask",
    "labels_to_tensor",
    "load_dataset_by_name",
    "normalize_view",
    "parse_object_cxr_annotation",
    "patient_level_split",
    "positive_label_ids",
    "register_cxr_image_plugins",
    "load_chexpert",
    "load_covidx",
    "load_csv",
    "load_cxr_lt",
    "load_jsrt",
    "load_mimic_cxr",
    "load_montgomery",
    "load_nih",
    "load_object_cxr",
    "load_openi",
    "load_padchest",
    "load_phantom",
    "load_plco",
    "load_rsna",
    "load_shenzhen",
    "load_siim",
    "load_vindr",
    "make_phantom_files",
]

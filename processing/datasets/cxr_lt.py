"""CXR-LT 2024 (Peng et al. 2024; PhysioNet ``cxr-lt-iccv-workshop-cvamd``): 40 long-tailed findings
on MIMIC-CXR-JPG images.

Layout: the challenge label CSVs in ``root`` (one per split), images in the MIMIC-CXR-JPG folder
``image_root`` (default: ``root``)::

    <root>/train_labeled.csv (or train.csv)        dicom_id, subject_id, study_id, fpath, <40 labels>
    <root>/development.csv (or val.csv/valid.csv)  same columns
    <root>/test_labeled.csv (or test.csv)          same columns
    <image_root>/files/p10/p10000032/s50414267/<dicom_id>.jpg

``fpath`` is the image path relative to ``image_root`` (a leading ``files/`` is optional). The 40
labels are read **by column name** (``CXR_LT_40``; CheXFound's reader takes "the last 40 columns",
which silently mislabels a reordered file). When ``image_root`` holds the MIMIC-CXR-JPG
``metadata`` CSV, views come from its ``ViewPosition`` (needed for ``frontal_only``); otherwise ``view`` is "" and ``is_frontal`` False.
CSVs without a ``split`` convention can be mapped with ``split_files={"train": "my_train.csv", ...}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ..labels import CXR_LT_40
from ._common import normalize_view
from ._io import (
    apply_uncertainty_policy,
    build_dataset_dict,
    find_first,
    frontal_mask,
    label_matrix_rows,
    match_label_columns,
    read_table,
    require_root,
    resolve_label_names,
)
from .mimic_cxr import mimic_report_paths, read_mimic_metadata

__all__ = ["load_cxr_lt", "CXR_LT_LABEL_SETS"]

CXR_LT_LABEL_SETS = {"40": CXR_LT_40}
_DEFAULT_SPLIT_FILES = {
    "train": ("train_labeled.csv", "train.csv"),
    "validation": ("development.csv", "development_labeled.csv", "val.csv", "valid.csv", "validation.csv"),
    "test": ("test_labeled.csv", "test.csv"),
}
_SUBJECT = re.compile(r"p(\d{6,})/s\d+")
_STUDY = re.compile(r"/s(\d+)/")
_LAYOUT = "label CSVs (train_labeled.csv / development.csv / test_labeled.csv) with an fpath column."


def load_cxr_lt(
    root,
    *,
    image_root=None,
    reports_root=None,
    labels: str | Sequence[str] = "40",
    split_files: Mapping[str, str] | None = None,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load CXR-LT 2024 label CSVs + MIMIC-CXR-JPG images into a ``DatasetDict``.

    Args:
        root: folder of the CXR-LT label CSVs.
        image_root: MIMIC-CXR-JPG folder the ``fpath`` column is relative to (default ``root``).
        reports_root: MIMIC-CXR reports folder; None loads no text.
        labels: ``"40"`` (the CXR-LT 2024 task-1 classes) or a list of label column names.
        split_files: ``{split: csv name}`` overriding the default file names; splits without a file
            are left out (at least one must exist).
        frontal_only: keep PA/AP images (needs ``mimic-cxr-2.0.0-metadata.csv.gz`` in ``image_root``).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "cxr_lt", _LAYOUT)
    image_root = require_root(image_root, "cxr_lt", "the MIMIC-CXR-JPG folder (files/pXX/...).") if image_root else root
    label_names = resolve_label_names(labels, CXR_LT_LABEL_SETS, "cxr_lt")
    if split_files is not None:
        candidates = {split: (name,) for split, name in split_files.items()}
        required = True
    else:
        candidates, required = _DEFAULT_SPLIT_FILES, False
    views = _mimic_views(image_root)
    if frontal_only and views is None:
        raise FileNotFoundError(
            f"load_cxr_lt: frontal_only=True needs view positions from {str(image_root / 'mimic-cxr-2.0.0-metadata.csv.gz')!r}, "
            "which does not exist."
        )
    if reports_root is not None:
        reports_root = require_root(reports_root, "cxr_lt", "the MIMIC-CXR reports folder (files/pXX/pSUBJECT/sSTUDY.txt).")
    tables = {}
    for split, names in candidates.items():
        csv_path = find_first(root, names)
        if csv_path is None:
            if required:
                raise FileNotFoundError(f"load_cxr_lt: split file {str(root / names[0])!r} not found.")
            continue
        table = _read_split(csv_path, image_root, label_names, views, reports_root)
        tables[split] = table[frontal_mask(table["view"])] if frontal_only else table
    if not tables:
        raise FileNotFoundError(
            f"load_cxr_lt: no CXR-LT label CSV under {str(root)!r}; looked for "
            f"{sorted({name for names in candidates.values() for name in names})}."
        )
    return build_dataset_dict(
        tables, collection="cxr_lt", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        extra_features={"dicom_id": Value("string")},
    )


def _mimic_views(image_root: Path) -> pd.Series | None:
    if not (image_root / "mimic-cxr-2.0.0-metadata.csv.gz").is_file():
        return None
    metadata = read_mimic_metadata(image_root, "cxr_lt")
    return pd.Series(metadata["ViewPosition"].map(normalize_view).to_numpy(), index=metadata["dicom_id"].astype(str))


def _resolve_image_path(image_root: Path, fpath: str) -> str:
    direct = image_root / fpath
    if fpath.startswith("files/") or direct.exists():
        return str(direct)
    return str(image_root / "files" / fpath)


def _read_split(csv_path, image_root, label_names, views, reports_root) -> pd.DataFrame:
    frame = read_table(csv_path, "cxr_lt", ["fpath"], what="CXR-LT label CSV")
    columns = match_label_columns(frame.columns, label_names, str(csv_path))
    values = frame[[columns[name] for name in label_names]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    values = apply_uncertainty_policy(values, "ignore")  # validates 1/0/blank; CXR-LT has no -1
    fpath = frame["fpath"].astype(str).str.lstrip("/")
    dicom_id = frame["dicom_id"].astype(str) if "dicom_id" in frame.columns else fpath.map(lambda p: Path(p).stem)
    if "subject_id" in frame.columns:
        subject_id = frame["subject_id"].astype("int64").astype(str)
    else:
        subject_id = fpath.str.extract(_SUBJECT, expand=False)
    if "study_id" in frame.columns:
        study_id = frame["study_id"].astype("int64").astype(str)
    else:
        study_id = fpath.str.extract(_STUDY, expand=False)
    if subject_id.isna().any():
        raise ValueError(f"load_cxr_lt: {csv_path}: cannot find the patient (subject_id column or pSUBJECT/ in fpath) "
                         f"for {int(subject_id.isna().sum())} row(s).")
    table = pd.DataFrame({
        "image_path": [_resolve_image_path(image_root, path) for path in fpath],
        "labels": label_matrix_rows(values),
        "view": dicom_id.map(views).fillna("").to_numpy() if views is not None else "",
        "patient_id": subject_id.to_numpy(),
        "study_id": study_id.fillna("").to_numpy(),
        "dicom_id": dicom_id.to_numpy(),
    })
    if reports_root is not None:
        table["report_path"] = mimic_report_paths(reports_root, subject_id.astype(int), study_id.astype(int))
    return table

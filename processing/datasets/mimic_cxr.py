"""MIMIC-CXR-JPG 2.0.0/2.1.0 (Johnson et al. 2019) with the MIMIC-CXR free-text reports.

Layout as distributed on PhysioNet::

    <root>/mimic-cxr-2.0.0-split.csv.gz        dicom_id, study_id, subject_id, split
    <root>/mimic-cxr-2.0.0-metadata.csv.gz     dicom_id, subject_id, study_id, ViewPosition, ...
    <root>/mimic-cxr-2.0.0-chexpert.csv.gz     subject_id, study_id, 14 CheXpert-labeler columns
    <root>/mimic-cxr-2.0.0-negbio.csv.gz       (same columns, NegBio labeler)
    <root>/files/p10/p10000032/s50414267/<dicom_id>.jpg
    <reports_root>/files/p10/p10000032/s50414267.txt   (mimic-cxr-reports.zip of MIMIC-CXR)

Splits are the official ``split`` column (``validate`` -> ``validation``); MIMIC's split is by
patient. Labels are per study (1, 0, -1 uncertain, blank), mapped by the uncertainty policy; a study
without a label row gets NaN. ``findings``/``impression`` come from
:func:`cxrfm.processing.text.extract_sections` (use ``clinical_text(report)`` for the relaxed-CLIP
last-paragraph fallback).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ..labels import CHEXPERT_5, CHEXPERT_13, CHEXPERT_14
from ._common import normalize_view
from ._io import (
    apply_uncertainty_policy,
    build_dataset_dict,
    frontal_mask,
    label_matrix_rows,
    match_label_columns,
    read_table,
    require_root,
    resolve_label_names,
)

__all__ = ["load_mimic_cxr", "MIMIC_LABEL_SETS", "mimic_image_path", "mimic_report_paths", "read_mimic_metadata"]

MIMIC_LABEL_SETS = {"14": CHEXPERT_14, "13": CHEXPERT_13, "5": CHEXPERT_5}
_SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
_METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
_LABEL_CSV = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz", "negbio": "mimic-cxr-2.0.0-negbio.csv.gz"}
_SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}
_LAYOUT = f"{_SPLIT_CSV}, {_METADATA_CSV}, {_LABEL_CSV['chexpert']} and files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg."


def mimic_image_path(root: Path, subject_id: int, study_id: int, dicom_id: str, suffix: str = ".jpg") -> str:
    """``files/p{first two digits}/p{subject}/s{study}/{dicom_id}.jpg`` under ``root``."""
    subject = str(int(subject_id))
    return str(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{int(study_id)}" / f"{dicom_id}{suffix}")


def mimic_report_paths(reports_root: Path, subject_ids: Sequence[int], study_ids: Sequence[int]) -> list[str]:
    """Report file per row: ``files/pXX/pSUBJECT/sSTUDY.txt`` under ``reports_root``.

    ``reports_root`` may be the folder holding ``files/`` or the ``files`` folder itself.
    """
    base = reports_root / "files" if (reports_root / "files").is_dir() else reports_root
    paths = []
    for subject_id, study_id in zip(subject_ids, study_ids):
        subject = str(int(subject_id))
        paths.append(str(base / f"p{subject[:2]}" / f"p{subject}" / f"s{int(study_id)}.txt"))
    return paths


def read_mimic_metadata(root: Path, collection: str = "mimic_cxr") -> pd.DataFrame:
    """``mimic-cxr-2.0.0-metadata.csv.gz`` with the columns the loaders use."""
    return read_table(
        root / _METADATA_CSV, collection, ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        what="MIMIC-CXR-JPG metadata CSV",
    )


def load_mimic_cxr(
    root,
    *,
    reports_root=None,
    labeler: str = "chexpert",
    labels: str | Sequence[str] = "14",
    uncertainty: str = "ignore",
    blank_as_negative: bool = False,
    frontal_only: bool = False,
    splits: Sequence[str] = ("train", "validation", "test"),
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load MIMIC-CXR-JPG (+ reports) into a ``DatasetDict`` with the official split.

    Args:
        root: the MIMIC-CXR-JPG folder (CSV files + ``files/``).
        reports_root: folder of the MIMIC-CXR reports (``files/pXX/pSUBJECT/sSTUDY.txt``); None
            loads no text (``report`` = ""). With reports, rows whose report file is missing or
            empty are skipped and counted (or raise with ``strict=True``).
        labeler: ``"chexpert"`` or ``"negbio"`` label file.
        labels: ``"14"``, ``"13"``, ``"5"`` or a list of label names.
        uncertainty: ``"ignore"`` (-1 -> NaN), ``"ones"`` or ``"zeros"``.
        blank_as_negative: blank -> 0 instead of NaN.
        frontal_only: keep PA/AP views (``ViewPosition``).
        splits: official splits to load.
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "mimic_cxr", _LAYOUT)
    if labeler not in _LABEL_CSV:
        raise ValueError(f"load_mimic_cxr: labeler must be one of {sorted(_LABEL_CSV)}, got {labeler!r}.")
    label_names = resolve_label_names(labels, MIMIC_LABEL_SETS, "mimic_cxr")
    split_frame = read_table(root / _SPLIT_CSV, "mimic_cxr", ["dicom_id", "study_id", "subject_id", "split"],
                             what="MIMIC-CXR-JPG split CSV")
    metadata = read_mimic_metadata(root)
    label_path = root / _LABEL_CSV[labeler]
    label_frame = read_table(label_path, "mimic_cxr", ["subject_id", "study_id"], what=f"MIMIC-CXR-JPG {labeler} label CSV")
    columns = match_label_columns(label_frame.columns, label_names, str(label_path))

    images = split_frame.merge(metadata[["dicom_id", "ViewPosition"]], on="dicom_id", how="left")
    study_labels = label_frame[["subject_id", "study_id"]].copy()
    values = label_frame[[columns[name] for name in label_names]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    values = apply_uncertainty_policy(values, uncertainty)
    if blank_as_negative:
        values = np.nan_to_num(values, nan=0.0)
    study_labels["_row"] = np.arange(len(study_labels))
    images = images.merge(study_labels, on=["subject_id", "study_id"], how="left")
    unlabeled = np.full(len(label_names), np.nan if not blank_as_negative else 0.0, dtype=np.float32)
    label_rows = [values[int(row)] if not pd.isna(row) else unlabeled for row in images["_row"]]

    views = images["ViewPosition"].map(normalize_view)
    table = pd.DataFrame({
        "image_path": [mimic_image_path(root, s, t, d) for s, t, d in
                       zip(images["subject_id"], images["study_id"], images["dicom_id"])],
        "labels": label_matrix_rows(np.stack(label_rows)) if label_rows else [],
        "view": views,
        "patient_id": images["subject_id"].astype(str),
        "study_id": images["study_id"].astype(str),
        "dicom_id": images["dicom_id"].astype(str),
        "split": images["split"].map(_SPLIT_NAMES),
    })
    if reports_root is not None:
        reports_root = require_root(reports_root, "mimic_cxr", "the MIMIC-CXR reports folder (files/pXX/pSUBJECT/sSTUDY.txt).")
        table["report_path"] = mimic_report_paths(reports_root, images["subject_id"], images["study_id"])
    unknown = table["split"].isna()
    if unknown.any():
        raise ValueError(f"load_mimic_cxr: {root / _SPLIT_CSV}: unknown split value(s) "
                         f"{sorted(images.loc[unknown, 'split'].astype(str).unique())[:5]}; expected train/validate/test.")
    if frontal_only:
        table = table[frontal_mask(table["view"])]
    tables = {}
    for split in splits:
        if split not in _SPLIT_NAMES.values():
            raise ValueError(f"load_mimic_cxr: unknown split {split!r}; choose from {list(_SPLIT_NAMES.values())}.")
        tables[split] = table[table["split"] == split].drop(columns=["split"])
    return build_dataset_dict(
        tables, collection="mimic_cxr", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        extra_features={"dicom_id": Value("string")},
    )

"""CheXpert (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv`` (+ optional test labels).

Layout as distributed (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``)::

    <root>/train.csv   <root>/valid.csv   [<root>/test_labels.csv or <root>/test.csv]
    <root>/train/patient00001/study1/view1_frontal.jpg ...

``Path`` in the CSVs starts with the release folder (``CheXpert-v1.0-small/train/...``); that
prefix is dropped and the rest is resolved under ``root``. Label values: 1 positive, 0 negative,
-1 uncertain, blank not mentioned. The uncertainty policy maps -1 (``"ignore"`` -> NaN, ``"ones"``,
``"zeros"``); blanks stay NaN unless ``blank_as_negative=True`` (CheXFound's reader fills them
with 0). The official ``valid.csv`` (234 images, radiologist consensus) is the validation split;
the test split is read when a test label file is present (CheXlocalize ``test_labels.csv``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from datasets import Value

from ..labels import CHEXPERT_5, CHEXPERT_13, CHEXPERT_14
from ._common import normalize_view
from ._io import (
    apply_uncertainty_policy,
    build_dataset_dict,
    find_first,
    label_matrix_rows,
    match_label_columns,
    read_table,
    require_root,
    resolve_label_names,
)

__all__ = ["load_chexpert", "CHEXPERT_LABEL_SETS"]

CHEXPERT_LABEL_SETS = {"14": CHEXPERT_14, "13": CHEXPERT_13, "5": CHEXPERT_5}
_SPLIT_FILES = {
    "train": ("train.csv",),
    "validation": ("valid.csv",),
    "test": ("test_labels.csv", "test.csv", "test/test_labels.csv"),
}
_RELEASE_PREFIX = re.compile(r"^CheXpert-v[\d.]+(?:-small)?/")
_PATIENT = re.compile(r"(patient\d+)")
_STUDY = re.compile(r"(patient\d+/study\d+)")
_LAYOUT = "train.csv, valid.csv and the train/ and valid/ image folders (CheXpert-v1.0 or -small)."


def load_chexpert(
    root,
    *,
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
    """Load CheXpert into a ``DatasetDict`` (``train``, ``validation``[, ``test``]).

    Args:
        root: the release folder holding ``train.csv`` / ``valid.csv``.
        labels: ``"14"`` (with No Finding), ``"13"`` (relaxed-CLIP evaluation), ``"5"`` (competition
            tasks) or a list of CSV label names.
        uncertainty: policy for -1: ``"ignore"`` (NaN), ``"ones"`` or ``"zeros"``.
        blank_as_negative: blank (not mentioned) -> 0 instead of NaN.
        frontal_only: keep ``Frontal/Lateral == "Frontal"`` rows only.
        splits: which official splits to load (a missing test file is skipped silently only if
            "test" was requested by default; name it explicitly to require it).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    Returns:
        ``DatasetDict`` / ``IterableDatasetDict`` with the common cxrfm features plus ``age`` and ``sex``;
        attribute ``skipped`` lists rows whose image was missing or unreadable.
    """
    root = require_root(root, "chexpert", _LAYOUT)
    label_names = resolve_label_names(labels, CHEXPERT_LABEL_SETS, "chexpert")
    tables = {}
    for split in splits:
        if split not in _SPLIT_FILES:
            raise ValueError(f"load_chexpert: unknown split {split!r}; choose from {list(_SPLIT_FILES)}.")
        csv_path = find_first(root, _SPLIT_FILES[split])
        if csv_path is None:
            if split == "test" and tuple(splits) == ("train", "validation", "test"):
                continue  # the test labels are a separate download
            raise FileNotFoundError(
                f"load_chexpert: no {' or '.join(_SPLIT_FILES[split])} under {str(root)!r} for split {split!r}."
            )
        tables[split] = _read_split(csv_path, root, label_names, uncertainty, blank_as_negative, frontal_only)
    return build_dataset_dict(
        tables,
        collection="chexpert",
        label_names=label_names,
        streaming=streaming,
        strict=strict, labels_only=labels_only,
        verify_images=verify_images,
        num_shards=num_shards,
        cache_dir=cache_dir,
        extra_features={"age": Value("float32"), "sex": Value("string")},
    )


def _read_split(csv_path, root, label_names, uncertainty, blank_as_negative, frontal_only) -> pd.DataFrame:
    frame = read_table(csv_path, "chexpert", ["Path"], what="CheXpert label CSV")
    columns = match_label_columns(frame.columns, label_names, str(csv_path))
    values = frame[[columns[name] for name in label_names]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    values = apply_uncertainty_policy(values, uncertainty)
    if blank_as_negative:
        values = np.nan_to_num(values, nan=0.0)
    relative = frame["Path"].astype(str).str.replace(_RELEASE_PREFIX, "", regex=True)
    if "Frontal/Lateral" in frame.columns:
        frontal = frame["Frontal/Lateral"].astype(str).str.lower().eq("frontal").to_numpy()
    else:  # test label files have no view columns: the file name says it (view1_frontal.jpg)
        frontal = ~relative.str.contains("lateral", case=False).to_numpy()
    if "AP/PA" in frame.columns:
        projection = frame["AP/PA"].map(normalize_view)
    else:
        projection = pd.Series([""] * len(frame))
    view = np.where(frontal, projection.to_numpy(dtype=object), "LATERAL")
    table = pd.DataFrame({
        "image_path": [str(root / path) for path in relative],
        "labels": label_matrix_rows(values),
        "view": view,
        "is_frontal": frontal,
        "patient_id": relative.str.extract(_PATIENT, expand=False).fillna(relative),
        "study_id": relative.str.extract(_STUDY, expand=False).fillna(""),
        "age": pd.to_numeric(frame["Age"], errors="coerce") if "Age" in frame.columns else np.nan,
        "sex": frame["Sex"].fillna("").astype(str) if "Sex" in frame.columns else "",
    })
    if frontal_only:
        table = table[table["is_frontal"]]
    return table

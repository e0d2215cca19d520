"""PadChest (Bustos et al., Med. Image Anal. 2020): one CSV with label lists and Spanish reports.

Layout as distributed (BIMCV; zips 0..54 unpacked into folders named by ``ImageDir``)::

    <root>/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz)
    <root>/<ImageDir>/<ImageID>.png        (or all PNGs flat in <root>/ or <root>/images/)

``Labels`` is a Python-literal list of lower-case finding names (``['pleural effusion', 'cardiomegaly']``);
a label is 1 when listed, else 0 (rows without a ``Labels`` value get NaN). ``Report`` is the
(stemmed) Spanish report. There is no official split: with ``test_set="physician"`` (default) the
test split is the radiologist-labelled subset (``MethodLabel == "Physician"``, 39,053 images; the
zero-shot test set of CheXzero / relaxed-CLIP) and the other patients are split into train and
validation by patient; the RNN-labelled images of test patients are left out so no patient is in
two splits. ``labels="n>100"`` keeps the findings with more than 100 positive images in the test
split (relaxed-CLIP: "61 radiographic findings where n > 100 in the testset"; the exact count depends
on their frontal/test filtering, which the paper does not fully state).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ._io import build_dataset_dict, find_first, frontal_mask, parse_list_cell, read_table, require_root, split_by_patient

logger = logging.getLogger(__name__)

__all__ = ["load_padchest"]

_CSV_NAMES = (
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "PADCHEST_chest_x_ray_images_labels_160K.csv",
)
_REQUIRED = ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "MethodLabel", "Labels", "Report"]
_VIEW = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL"}
_MIN_COUNT = re.compile(r"^n\s*>\s*(\d+)$")
_LAYOUT = "the PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv file and the image folders 0/ ... 54/."


def load_padchest(
    root,
    *,
    csv_path=None,
    labels: str | Sequence[str] = "all",
    test_set: str | None = "physician",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    validation_fraction: float = 0.1,
    seed: int = 0,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load PadChest into ``train`` / ``validation`` / ``test``.

    Args:
        root: image folder (holding ``0/`` ... ``54/`` or the PNGs).
        csv_path: the label CSV (default: looked up in ``root``).
        labels: ``"all"`` (every finding name in the CSV), ``"n>100"`` (more than 100 positives in
            the test split; any ``"n>N"``) or a list of finding names (case-insensitive).
        test_set: ``"physician"`` (test = radiologist-labelled images) or None (patient-level split
            by ``fractions``).
        fractions: train/validation/test patient fractions when ``test_set`` is None.
        validation_fraction: share of non-test patients in ``validation`` when ``test_set`` is set.
        seed: seed of the patient-level split.
        frontal_only: keep PA / AP / AP_horizontal projections.
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "padchest", _LAYOUT)
    csv_path = Path(csv_path) if csv_path is not None else find_first(root, _CSV_NAMES)
    if csv_path is None:
        raise FileNotFoundError(f"load_padchest: no PadChest CSV ({', '.join(_CSV_NAMES)}) under {str(root)!r}; "
                                "pass csv_path=.")
    frame = read_table(csv_path, "padchest", _REQUIRED, what="PadChest label CSV", low_memory=False)
    parsed = {cell: parse_list_cell(cell, str(csv_path)) for cell in frame["Labels"].dropna().unique()}
    findings = [parsed.get(cell) for cell in frame["Labels"]]  # None where the cell is empty
    table = _table(frame, root, findings)
    if frontal_only:
        table = table[frontal_mask(table["view"])]
    tables = _split(table, test_set, fractions, validation_fraction, seed)
    label_names = _label_names(labels, tables, findings, str(csv_path))
    position = {name: column for column, name in enumerate(label_names)}
    for split, part in tables.items():
        part = part.copy()
        part["labels"] = [_vector(findings[row], position) for row in part["_row"]]
        tables[split] = part.drop(columns=["_row", "method"])
    return build_dataset_dict(
        tables, collection="padchest", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        extra_features={"age": Value("float32"), "sex": Value("string"), "label_method": Value("string")},
    )


def _image_paths(frame: pd.DataFrame, root: Path) -> list[str]:
    directories = frame["ImageDir"].astype("Int64").astype(str)
    foldered = any((root / name).is_dir() for name in directories.unique()[:5])
    if foldered:
        return [str(root / folder / image) for folder, image in zip(directories, frame["ImageID"])]
    flat = root / "images" if (root / "images").is_dir() else root
    return [str(flat / image) for image in frame["ImageID"]]


def _table(frame: pd.DataFrame, root: Path, findings: list) -> pd.DataFrame:
    study_year = pd.to_numeric(frame["StudyDate_DICOM"].astype(str).str[:4], errors="coerce") \
        if "StudyDate_DICOM" in frame else np.nan
    birth = pd.to_numeric(frame["PatientBirth"], errors="coerce") if "PatientBirth" in frame else np.nan
    views = frame["Projection"].fillna("").astype(str).str.upper().map(lambda raw: _VIEW.get(raw, raw))
    return pd.DataFrame({
        "image_path": _image_paths(frame, root),
        "labels": [np.zeros(0, np.float32)] * len(frame),  # filled once the label set is known
        "report": frame["Report"].fillna("").astype(str).str.strip(),
        "view": views,
        "patient_id": frame["PatientID"].astype(str),
        "study_id": frame["StudyID"].astype(str),
        "age": study_year - birth,
        "sex": frame["PatientSex_DICOM"].fillna("").astype(str) if "PatientSex_DICOM" in frame else "",
        "label_method": frame["MethodLabel"].fillna("").astype(str),
        "method": frame["MethodLabel"].fillna("").astype(str),
        "_row": np.arange(len(frame)),
    })


def _split(table, test_set, fractions, validation_fraction, seed) -> dict[str, pd.DataFrame]:
    if test_set is None:
        return split_by_patient(table, fractions, seed)
    if test_set != "physician":
        raise ValueError(f"load_padchest: test_set must be 'physician' or None, got {test_set!r}.")
    is_test = table["method"].eq("Physician").to_numpy()
    test_patients = set(table.loc[is_test, "patient_id"])
    rest = table[~is_test & ~table["patient_id"].isin(test_patients).to_numpy()]
    dropped = int((~is_test).sum()) - len(rest)
    if dropped:
        logger.info("padchest: %d RNN-labelled image(s) of test patients left out (no patient in two splits).", dropped)
    parts = split_by_patient(rest, (1 - validation_fraction, validation_fraction), seed, ("train", "validation"))
    parts["test"] = table[is_test].reset_index(drop=True)
    return parts


def _label_names(labels, tables, findings, source) -> list[str]:
    vocabulary = sorted({name for names in findings if names for name in names})
    if isinstance(labels, str):
        if labels == "all":
            return vocabulary
        match = _MIN_COUNT.match(labels.strip())
        if not match:
            raise ValueError(f"load_padchest: labels must be 'all', 'n>N' or a list of names, got {labels!r}.")
        if "test" not in tables:
            raise ValueError("load_padchest: labels='n>N' counts positives in the test split, which is empty.")
        minimum = int(match.group(1))
        counts = Counter(name for row in tables["test"]["_row"] if findings[row] for name in set(findings[row]))
        return sorted(name for name, count in counts.items() if count > minimum)
    by_lower = {name.lower(): name for name in vocabulary}
    missing = [name for name in labels if name.lower() not in by_lower]
    if missing:
        raise ValueError(f"load_padchest: {source}: label(s) {missing} never occur in 'Labels'.")
    return [by_lower[name.lower()] for name in labels]


def _vector(names, position) -> np.ndarray:
    vector = np.zeros(len(position), dtype=np.float32)
    if names is None:
        vector[:] = np.nan
        return vector
    for name in names:
        if name in position:
            vector[position[name]] = 1.0
    return vector

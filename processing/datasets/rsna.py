"""RSNA Pneumonia Detection Challenge 2018 (Shih et al., Radiol. AI 2019): labels + boxes, DICOM.

Layout as distributed on Kaggle::

    <root>/stage_2_train_labels.csv            patientId, x, y, width, height, Target
    <root>/stage_2_detailed_class_info.csv     patientId, class   (optional)
    <root>/stage_2_train_images/<patientId>.dcm

One row per image (``patientId``; one image per patient). ``labels`` = ``Target`` ("Pneumonia"),
boxes (``x, y, width, height`` -> x_min, y_min, x_max, y_max) with ``with_masks=True``. The stage-2
test labels were never released, so the split is a deterministic patient-level one (default
70/15/15 as in MGCA). Views come from a DICOM-header CSV when given (``dicom_headers_csv``, e.g.
TorchXRayVision's ``kaggle_stage_2_train_images_dicom_headers.csv.gz`` with ``PatientID`` and
``ViewPosition``); otherwise ``view`` is "" (every RSNA image is frontal, so ``is_frontal`` is True).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ._common import normalize_view
from ._io import build_dataset_dict, find_first, read_table, require_root, split_by_patient

__all__ = ["load_rsna"]

_LABEL_NAMES = ("Pneumonia",)
_LABEL_CSVS = ("stage_2_train_labels.csv", "stage_2_train_labels.csv.zip", "stage_1_train_labels.csv")
_IMAGE_DIRS = ("stage_2_train_images", "stage_1_train_images")
_LAYOUT = "stage_2_train_labels.csv and stage_2_train_images/<patientId>.dcm."


def load_rsna(
    root,
    *,
    with_masks: bool = False,
    dicom_headers_csv=None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load RSNA Pneumonia into a patient-level ``train`` / ``validation`` / ``test`` split.

    Args:
        root: the competition folder.
        with_masks: add the opacity boxes (``boxes``, ``box_labels``; ``masks`` empty).
        dicom_headers_csv: optional CSV of DICOM headers (``PatientID``, ``ViewPosition``).
        fractions, seed: patient-level split.
        frontal_only: accepted for a uniform signature (all images are frontal).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "rsna", _LAYOUT)
    csv_path = find_first(root, _LABEL_CSVS)
    if csv_path is None:
        raise FileNotFoundError(f"load_rsna: none of {list(_LABEL_CSVS)} under {str(root)!r}.")
    frame = read_table(csv_path, "rsna", ["patientId", "x", "y", "width", "height", "Target"], what="RSNA label CSV")
    image_dir = find_first(root, _IMAGE_DIRS) or root / _IMAGE_DIRS[0]
    class_info = _class_info(root)
    views = _views(dicom_headers_csv)
    frame = frame.assign(patientId=frame["patientId"].astype(str), Target=pd.to_numeric(frame["Target"], errors="coerce"))
    targets = frame.groupby("patientId", sort=True)["Target"].agg(["min", "max"])
    inconsistent = targets[(targets["min"] != targets["max"]) | ~targets["max"].isin([0, 1])]
    if len(inconsistent):
        raise ValueError(f"load_rsna: {csv_path}: patientId {inconsistent.index[0]} has Target values "
                         f"{sorted(frame.loc[frame['patientId'] == inconsistent.index[0], 'Target'].unique())}; "
                         "expected one value per patient, 0 or 1.")
    patients = targets.index.to_numpy()
    table = pd.DataFrame({
        "image_path": [str(Path(image_dir) / f"{patient}.dcm") for patient in patients],
        "labels": [np.array([value], dtype=np.float32) for value in targets["max"].astype(float)],
        "view": [views.get(patient, "") for patient in patients],
        "is_frontal": True,
        "patient_id": patients,
        "study_id": patients,
        "detailed_class": [class_info.get(patient, "") for patient in patients],
    })
    if with_masks:
        table["boxes"] = _boxes(frame, patients)
        table["box_labels"] = [[0] * len(boxes) for boxes in table["boxes"]]
        table["masks"] = [[] for _ in range(len(table))]
    return build_dataset_dict(
        split_by_patient(table, fractions, seed), collection="rsna", label_names=_LABEL_NAMES,
        streaming=streaming, strict=strict, labels_only=labels_only, verify_images=verify_images, num_shards=num_shards,
        cache_dir=cache_dir, with_masks=with_masks, extra_features={"detailed_class": Value("string")},
    )


def _boxes(frame: pd.DataFrame, patients) -> list[list[list[float]]]:
    """Per patient, its boxes as (x_min, y_min, x_max, y_max) in the CSV's row order."""
    boxes = frame.dropna(subset=["x", "y", "width", "height"])
    corners = np.stack([boxes["x"], boxes["y"], boxes["x"] + boxes["width"], boxes["y"] + boxes["height"]], axis=1)
    per_patient: dict[str, list] = {}
    for patient, box in zip(boxes["patientId"], corners.tolist()):
        per_patient.setdefault(patient, []).append(box)
    return [per_patient.get(patient, []) for patient in patients]


def _class_info(root: Path) -> dict[str, str]:
    path = find_first(root, ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv"))
    if path is None:
        return {}
    frame = read_table(path, "rsna", ["patientId", "class"], what="RSNA detailed class CSV")
    return dict(zip(frame["patientId"].astype(str), frame["class"].astype(str)))


def _views(dicom_headers_csv) -> dict[str, str]:
    if dicom_headers_csv is None:
        return {}
    frame = read_table(Path(dicom_headers_csv), "rsna", ["PatientID", "ViewPosition"], what="RSNA DICOM-header CSV")
    return dict(zip(frame["PatientID"].astype(str), frame["ViewPosition"].map(normalize_view)))

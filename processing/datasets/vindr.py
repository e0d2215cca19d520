"""VinDr-CXR 1.0.0 (Nguyen et al., Sci. Data 2022): image-level labels and boxes, DICOM images.

Layout as distributed on PhysioNet::

    <root>/annotations/image_labels_train.csv   image_id, rad_ID, <28 labels> (3 radiologists per image)
    <root>/annotations/image_labels_test.csv    image_id, <28 labels>        (consensus of 5)
    <root>/annotations/annotations_train.csv    image_id, rad_id, class_name, x_min, y_min, x_max, y_max
    <root>/annotations/annotations_test.csv
    <root>/train/<image_id>.dicom   <root>/test/<image_id>.dicom

(the CSVs may also sit directly in ``root``). Training labels are voted over the radiologists
(``train_vote="majority"``: at least 2 of 3; ``"any"``: at least one). The validation split is a
deterministic share of the training images (VinDr has no patient ids; each image is treated as
its own patient). DICOMs are decoded through ``load_cxr_image`` (see ``_io``). With
``with_masks=True`` the boxes of the labels kept are added (``masks`` stays empty: VinDr has
boxes only); training images keep every radiologist's boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import VINDR_20, VINDR_28
from ._io import build_dataset_dict, find_first, label_matrix_rows, match_label_columns, read_table, require_root, resolve_label_names, split_by_patient

__all__ = ["load_vindr", "VINDR_28", "VINDR_20", "VINDR_LABEL_SETS"]

VINDR_LABEL_SETS = {"28": VINDR_28, "20": VINDR_20}
_ALIASES = {"Other diseases": ["Other disease"], "Other lesion": ["Other lesions"]}
_BOX_COLUMNS = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
_LAYOUT = "annotations/image_labels_{train,test}.csv, annotations/annotations_{train,test}.csv, train/ and test/ DICOMs."


def load_vindr(
    root,
    *,
    labels: str | Sequence[str] = "28",
    train_vote: str = "majority",
    validation_fraction: float = 0.1,
    seed: int = 0,
    with_masks: bool = False,
    splits: Sequence[str] = ("train", "validation", "test"),
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load VinDr-CXR into ``train`` / ``validation`` / ``test`` (official test set).

    Args:
        root: the VinDr-CXR folder.
        labels: ``"28"`` (all), ``"20"`` (relaxed-CLIP zero-shot set) or a list of CSV label names.
        train_vote: ``"majority"`` or ``"any"`` over the training radiologists.
        validation_fraction: share of training images held out as ``validation``.
        seed: seed of that hold-out.
        with_masks: add ``boxes`` / ``box_labels`` (``masks`` empty).
        splits: which of train/validation/test to return.
        frontal_only: accepted for a uniform signature (VinDr-CXR is all PA).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "vindr", _LAYOUT)
    label_names = resolve_label_names(labels, VINDR_LABEL_SETS, "vindr")
    if train_vote not in ("majority", "any"):
        raise ValueError(f"load_vindr: train_vote must be 'majority' or 'any', got {train_vote!r}.")
    tables = {}
    if {"train", "validation"} & set(splits):
        train = _read_split(root, "train", label_names, train_vote, with_masks)
        parts = split_by_patient(train, (1 - validation_fraction, validation_fraction), seed, ("train", "validation"))
        tables.update({name: part for name, part in parts.items() if name in splits})
    if "test" in splits:
        tables["test"] = _read_split(root, "test", label_names, train_vote, with_masks)
    return build_dataset_dict(
        tables, collection="vindr", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir, with_masks=with_masks,
    )


def _csv(root: Path, name: str) -> Path:
    path = find_first(root, (f"annotations/{name}", name))
    if path is None:
        raise FileNotFoundError(f"load_vindr: {name} not found in {str(root / 'annotations')!r} or {str(root)!r}.")
    return path


def _read_split(root: Path, split: str, label_names, train_vote: str, with_masks: bool) -> pd.DataFrame:
    csv_path = _csv(root, f"image_labels_{split}.csv")
    frame = read_table(csv_path, "vindr", ["image_id"], what="VinDr-CXR image-label CSV")
    columns = match_label_columns(frame.columns, label_names, str(csv_path), _ALIASES)
    values = frame[[columns[name] for name in label_names]].apply(pd.to_numeric, errors="coerce").astype(np.float32)
    values.insert(0, "image_id", frame["image_id"].astype(str))
    grouped = values.groupby("image_id", sort=True)
    if split == "train" and train_vote == "majority":
        readers = grouped.size().to_numpy()[:, None]
        matrix = (grouped.sum().to_numpy() * 2 > readers).astype(np.float32)
    else:
        matrix = (grouped.max().to_numpy() > 0).astype(np.float32)
    image_ids = grouped.size().index.astype(str)
    table = pd.DataFrame({
        "image_path": [str(root / split / f"{image_id}.dicom") for image_id in image_ids],
        "labels": label_matrix_rows(matrix),
        "view": "PA",
        "patient_id": image_ids,
        "study_id": image_ids,
    })
    if with_masks:
        boxes = read_table(_csv(root, f"annotations_{split}.csv"), "vindr", _BOX_COLUMNS, what="VinDr-CXR box CSV")
        table["boxes"], table["box_labels"] = _boxes_per_image(boxes, image_ids, label_names)
        table["masks"] = [[] for _ in range(len(table))]
    return table


def _boxes_per_image(boxes: pd.DataFrame, image_ids, label_names):
    position = {name.lower(): index for index, name in enumerate(label_names)}
    for name, aliases in _ALIASES.items():
        if name.lower() in position:
            for alias in aliases:
                position[alias.lower()] = position[name.lower()]
    boxes = boxes.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    boxes = boxes[boxes["class_name"].astype(str).str.lower().isin(position)]
    per_image = {image_id: ([], []) for image_id in image_ids}
    for row in boxes.itertuples(index=False):
        entry = per_image.get(str(row.image_id))
        if entry is not None:
            entry[0].append([float(row.x_min), float(row.y_min), float(row.x_max), float(row.y_max)])
            entry[1].append(position[str(row.class_name).lower()])
    return [per_image[i][0] for i in image_ids], [per_image[i][1] for i in image_ids]

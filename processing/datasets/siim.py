"""SIIM-ACR Pneumothorax Segmentation 2019 (Zawacki et al.): RLE masks, DICOM images.

Layout as distributed on Kaggle::

    <root>/train-rle.csv          ImageId, " EncodedPixels"   (stage 1: relative run-length encoding)
    <root>/stage_2_train.csv      ImageId, EncodedPixels      (stage 2: standard run-length encoding)
    <root>/dicom-images-train/<study>/<series>/<ImageId>.dcm  (any depth; found by file name)

``EncodedPixels`` is "-1" for no pneumothorax, else run-length pairs over the 1024 x 1024 mask in
column-major order: stage 1 pairs are (gap since the end of the previous run, length), stage 2
pairs are (1-based start, length). ``rle_format="auto"`` picks stage 1 for ``*rle*`` files and
stage 2 otherwise. An image can have several rows (several annotated regions); ``labels`` =
["Pneumothorax"] is 1 when any row has a mask. ``with_masks=True`` adds one binary mask (PNG, 0/255)
per region and its bounding box. Patient ids are read from the DICOM headers when
``read_patient_ids=True`` (exact patient-level split); by default each image is its own patient.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import build_dataset_dict, find_first, png_bytes, read_table, require_root, split_by_patient

__all__ = ["load_siim", "decode_siim_rle"]

_LABEL_NAMES = ("Pneumothorax",)
_CSV_NAMES = ("train-rle.csv", "stage_2_train.csv", "siim-pneumothorax-train-rle.csv.gz")
_LAYOUT = "train-rle.csv (or stage_2_train.csv) and dicom-images-train/**/<ImageId>.dcm."


def decode_siim_rle(rle: str, height: int = 1024, width: int = 1024, relative: bool = True) -> np.ndarray:
    """SIIM run-length string -> uint8 mask (H, W) with 1 inside; "-1" or "" -> all zeros.

    Runs index the image in column-major order (down the first column first).
    """
    flat = np.zeros(height * width, dtype=np.uint8)
    values = str(rle).split()
    if not values or values == ["-1"]:
        return flat.reshape(width, height).T
    numbers = np.asarray(values, dtype=np.int64)
    if len(numbers) % 2:
        raise ValueError(f"SIIM RLE has an odd number of values ({len(numbers)}); expected start/length pairs.")
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        position = position + start if relative else start - 1
        if position < 0 or position + length > flat.size:
            raise ValueError(f"SIIM RLE run ({start}, {length}) falls outside a {height}x{width} mask.")
        flat[position:position + length] = 1
        position += length
    return flat.reshape(width, height).T


def load_siim(
    root,
    *,
    csv_path=None,
    rle_format: str = "auto",
    with_masks: bool = False,
    mask_size: int = 1024,
    read_patient_ids: bool = False,
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
    """Load SIIM-ACR into a patient-level ``train`` / ``validation`` / ``test`` split.

    Args:
        root: the competition folder (the DICOMs anywhere below it).
        csv_path: the RLE CSV (default: looked up in ``root``).
        rle_format: ``"auto"``, ``"relative"`` (stage 1) or ``"absolute"`` (stage 2).
        with_masks: add ``masks`` (one per annotated region), ``boxes`` and ``box_labels``.
        mask_size: side of the square masks (1024 in the challenge).
        read_patient_ids: read ``PatientID`` from each DICOM header for the split.
        fractions, seed: patient-level split (MGCA: 70/15/15).
        frontal_only: accepted for a uniform signature (all images are frontal).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "siim", _LAYOUT)
    csv_path = Path(csv_path) if csv_path is not None else find_first(root, _CSV_NAMES)
    if csv_path is None:
        raise FileNotFoundError(f"load_siim: none of {list(_CSV_NAMES)} under {str(root)!r}; pass csv_path=.")
    if rle_format not in ("auto", "relative", "absolute"):
        raise ValueError(f"load_siim: rle_format must be 'auto', 'relative' or 'absolute', got {rle_format!r}.")
    relative = "rle" in csv_path.name.lower() if rle_format == "auto" else rle_format == "relative"
    frame = read_table(csv_path, "siim", ["ImageId", "EncodedPixels"], what="SIIM RLE CSV")
    locations = _dicom_locations(root)
    rows = []
    for image_id, group in frame.groupby("ImageId", sort=True):
        rles = [str(rle).strip() for rle in group["EncodedPixels"] if str(rle).strip() not in ("-1", "", "nan")]
        path = locations.get(f"{image_id}.dcm", str(root / "dicom-images-train" / f"{image_id}.dcm"))
        rows.append({
            "image_path": path,
            "labels": np.array([1.0 if rles else 0.0], dtype=np.float32),
            "view": "",
            "is_frontal": True,
            "patient_id": _patient_id(path) if read_patient_ids else str(image_id),
            "study_id": str(image_id),
            "mask_rles": tuple(rles),
        })
    table = pd.DataFrame(rows)
    tables = split_by_patient(table, fractions, seed)
    return build_dataset_dict(
        tables, collection="siim", label_names=_LABEL_NAMES, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir, with_masks=with_masks,
        row_hook=_MaskHook(mask_size, relative) if with_masks and not labels_only else None,
    )


class _MaskHook:
    """Row hook: the row's RLE strings -> ``masks`` (PNG) and their bounding ``boxes``."""

    def __init__(self, size: int, relative: bool):
        self.size = size
        self.relative = relative

    def __call__(self, example: dict, record: dict) -> dict:
        masks, boxes = [], []
        for rle in record["mask_rles"]:
            mask = decode_siim_rle(rle, self.size, self.size, self.relative)
            rows, cols = np.nonzero(mask)
            masks.append(png_bytes(mask))
            boxes.append([float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)])
        example.update(masks=masks, boxes=boxes, box_labels=[0] * len(masks))
        return example


def _dicom_locations(root: Path) -> dict[str, str]:
    locations = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".dcm"):
                locations.setdefault(name, os.path.join(folder, name))
    return locations


def _patient_id(path: str) -> str:
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as error:  # a missing/corrupt file is reported by the row check later
        return f"unreadable:{os.path.basename(path)}:{type(error).__name__}"
    return str(header.get("PatientID", "")) or os.path.basename(path)

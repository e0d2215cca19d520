"""JSRT database (Shiraishi et al., AJR 2000): 247 PA radiographs, 154 with a lung nodule.

Layout as distributed by the JSRT::

    <root>/All247images/JPCLN001.IMG ... JPCNN093.IMG   (or the .IMG / converted .png files in <root>)
    <root>/CLNDAT_EN.txt    nodule cases: file, subtlety, size [mm], age, sex, x, y, malignant/benign, ...
    <root>/CNNDAT_EN.txt    non-nodule cases: file, age, sex, ...

``JPCLN`` files have a nodule (label 1), ``JPCNN`` files do not. ``.IMG`` files are headerless
2048 x 2048 12-bit big-endian images; ``Image()`` decodes them through the JSRT Pillow plugin of
``_io`` (inverted to bone-bright, 16-bit). With ``with_masks=True`` the nodule becomes one box
centred on (x, y) with the nodule diameter as side (pixel size 0.175 mm). No official split:
each image is its own patient, split 70/10/20 by default (CheXFound).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ._io import build_dataset_dict, natural_key, read_text_lenient, require_root, split_by_patient

__all__ = ["load_jsrt", "parse_jsrt_clinical"]

_LABEL_NAMES = ("Nodule",)
_PIXEL_MM = 0.175
_NAME = re.compile(r"^JPC(LN|NN)\d{3}$", re.IGNORECASE)
_SEX = re.compile(r"^(male|female)$", re.IGNORECASE)
_LAYOUT = "All247images/JPC{LN,NN}###.IMG (or .png) and optionally CLNDAT_EN.txt / CNNDAT_EN.txt."


def load_jsrt(
    root,
    *,
    with_masks: bool = False,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load JSRT (nodule vs non-nodule) into a deterministic ``train`` / ``validation`` / ``test`` split.

    Args:
        root: the JSRT folder.
        with_masks: add the nodule box (``boxes`` / ``box_labels``; ``masks`` empty).
        fractions, seed: deterministic split (each image is its own patient).
        frontal_only: accepted for a uniform signature (all images are PA).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "jsrt", _LAYOUT)
    images = _find_images(root)
    if not images:
        raise FileNotFoundError(f"load_jsrt: no JPCLN###/JPCNN### .IMG or .png files in {str(root)!r} "
                                f"(expected {_LAYOUT}).")
    clinical = {}
    for name in ("CLNDAT_EN.txt", "CNNDAT_EN.txt"):
        path = next(iter(sorted(root.rglob(name))), None)
        if path is not None:
            clinical.update(parse_jsrt_clinical(read_text_lenient(path)))
    rows = []
    for stem, path in images.items():
        info = clinical.get(stem, {})
        row = {
            "image_path": str(path),
            "labels": np.array([1.0 if stem.startswith("JPCLN") else 0.0], dtype=np.float32),
            "view": "PA",
            "patient_id": stem,
            "study_id": stem,
            "age": info.get("age", np.nan),
            "sex": info.get("sex", ""),
            "nodule_size_mm": info.get("size_mm", np.nan),
            "subtlety": info.get("subtlety", -1),
            "malignant": info.get("malignant", ""),
        }
        if with_masks:
            row["boxes"], row["box_labels"] = _nodule_box(info)
            row["masks"] = []
        rows.append(row)
    table = pd.DataFrame(rows)
    return build_dataset_dict(
        split_by_patient(table, fractions, seed), collection="jsrt", label_names=_LABEL_NAMES,
        streaming=streaming, strict=strict, labels_only=labels_only, verify_images=verify_images, num_shards=num_shards,
        cache_dir=cache_dir, with_masks=with_masks,
        extra_features={"age": Value("float32"), "sex": Value("string"), "nodule_size_mm": Value("float32"),
                        "subtlety": Value("int32"), "malignant": Value("string")},
    )


def _find_images(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*"), key=lambda p: natural_key(p.name)):
        if path.suffix.lower() in (".img", ".png") and _NAME.match(path.stem):
            stem = path.stem.upper()
            if stem not in found or path.suffix.lower() == ".img":  # prefer the original .IMG
                found[stem] = path
    return dict(sorted(found.items()))


def parse_jsrt_clinical(text: str) -> dict[str, dict]:
    """``{"JPCLN001": {"age", "sex", ["subtlety", "size_mm", "x", "y", "malignant"]}}`` from CLNDAT/CNNDAT text.

    Fields are tab- (or multi-space-) separated; age is the number just before the sex field, and
    for nodule cases subtlety and size precede it and x, y and malignant/benign follow it.
    """
    records = {}
    for line in text.splitlines():
        fields = [field.strip() for field in re.split(r"\t+| {2,}", line.strip()) if field.strip()]
        if not fields or not _NAME.match(Path(fields[0]).stem):
            continue
        stem = Path(fields[0]).stem.upper()
        sex_at = next((i for i, field in enumerate(fields) if _SEX.match(field)), None)
        record: dict = {}
        if sex_at is not None:
            record["sex"] = fields[sex_at][0].upper()
            record["age"] = _number(fields[sex_at - 1]) if sex_at >= 1 else np.nan
            if stem.startswith("JPCLN") and sex_at >= 4:
                record["subtlety"] = int(_number(fields[1], -1))
                record["size_mm"] = _number(fields[2])
                record["x"] = _number(fields[sex_at + 1]) if len(fields) > sex_at + 1 else np.nan
                record["y"] = _number(fields[sex_at + 2]) if len(fields) > sex_at + 2 else np.nan
                record["malignant"] = fields[sex_at + 3].lower() if len(fields) > sex_at + 3 else ""
        records[stem] = record
    return records


def _number(text: str, default: float = np.nan) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def _nodule_box(info: dict) -> tuple[list, list]:
    x, y, size = info.get("x", np.nan), info.get("y", np.nan), info.get("size_mm", np.nan)
    if any(np.isnan(value) for value in (x, y, size)):
        return [], []
    radius = size / _PIXEL_MM / 2.0
    return [[x - radius, y - radius, x + radius, y + radius]], [0]

"""COVIDx CXR (Wang et al. 2020; CXR-2/3/4, Wu et al. 2023): split text files + image folders.

Layout as distributed (Kaggle / COVID-Net)::

    <root>/train.txt  <root>/val.txt  <root>/test.txt     "patient_id filename class source" per line
    <root>/train/<filename>  <root>/val/<filename>  <root>/test/<filename>

CXR-2/3/4 classes are ``positive`` / ``negative`` -> one label "COVID-19" (1 = positive). Older
COVIDx releases use ``normal`` / ``pneumonia`` / ``COVID-19`` -> one-hot over those names (MGCA's
3-class accuracy task). Splits are the official files (``val.txt`` only exists from CXR-3 on).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ._io import build_dataset_dict, require_file, require_root

__all__ = ["load_covidx"]

_SPLIT_FILES = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}
_IMAGE_DIRS = {"train": "train", "validation": "val", "test": "test"}
_BINARY = {"positive": 1.0, "negative": 0.0}
_LAYOUT = "train.txt / val.txt / test.txt and the train/ val/ test/ image folders."


def load_covidx(
    root,
    *,
    splits: Sequence[str] | None = None,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load COVIDx with its official split files.

    Args:
        root: the COVIDx folder.
        splits: splits to load (default: every split whose text file exists; train and test required).
        frontal_only: accepted for a uniform signature (COVIDx images are frontal).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "covidx", _LAYOUT)
    if splits is None:
        splits = [split for split, name in _SPLIT_FILES.items() if (root / name).is_file() or split != "validation"]
    frames = {split: _read_split_file(root, split) for split in splits}
    classes = sorted({label for frame in frames.values() for label in frame["class"]})
    binary = set(classes) <= set(_BINARY)
    label_names = ["COVID-19"] if binary else classes
    tables = {}
    for split, frame in frames.items():
        tables[split] = pd.DataFrame({
            "image_path": [str(root / _IMAGE_DIRS[split] / name) for name in frame["filename"]],
            "labels": [_encode(label, label_names, binary) for label in frame["class"]],
            "view": "",
            "is_frontal": True,
            "patient_id": frame["patient_id"],
            "study_id": frame["filename"],
            "source": frame["source"],
        })
    return build_dataset_dict(
        tables, collection="covidx", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        extra_features={"source": Value("string")},
    )


def _encode(label: str, label_names: Sequence[str], binary: bool) -> np.ndarray:
    """positive/negative -> [1.]/[0.] for "COVID-19"; otherwise one-hot over the class names."""
    if binary:
        return np.array([_BINARY[label]], dtype=np.float32)
    return (np.asarray(label_names) == label).astype(np.float32)


def _read_split_file(root: Path, split: str) -> pd.DataFrame:
    if split not in _SPLIT_FILES:
        raise ValueError(f"load_covidx: unknown split {split!r}; choose from {list(_SPLIT_FILES)}.")
    path = require_file(root / _SPLIT_FILES[split], "covidx", "split file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 4:
            raise ValueError(f"load_covidx: {path}:{number}: expected 'patient_id filename class source', got {line!r}.")
        # File names may contain spaces in old releases: everything between the id and class.
        rows.append({"patient_id": fields[0], "filename": " ".join(fields[1:-2]), "class": fields[-2], "source": fields[-1]})
    return pd.DataFrame(rows, columns=["patient_id", "filename", "class", "source"])

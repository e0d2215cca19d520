"""NIH ChestX-ray14 (Wang et al., CVPR 2017): ``Data_Entry_2017*.csv`` + official split lists.

Layout as distributed (NIH box or its Kaggle mirror)::

    <root>/Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv, .gz accepted)
    <root>/train_val_list.txt   <root>/test_list.txt
    <root>/images/00000001_000.png         (or images_001/images/..., images_012/images/...)

``Finding Labels`` holds ``|``-separated names ("No Finding" for none); every name must be one of
the 14 findings or "No Finding", so a typo cannot silently become a negative. Labels are 1/0 (the
NLP labels have no uncertainty). The official test list is the test split; the validation split is
a deterministic patient-level share of ``train_val_list.txt`` (``validation_fraction``), so no
patient is in two splits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ..labels import NIH_14, NIH_15
from ._io import build_dataset_dict, find_first, label_matrix_rows, read_table, require_file, require_root, resolve_label_names, split_by_patient

__all__ = ["load_nih", "NIH_14", "NIH_LABEL_SETS"]

NIH_LABEL_SETS = {"14": NIH_14, "15": NIH_15}
_NO_FINDING = "No Finding"
_CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz")
_REQUIRED = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
_LAYOUT = "Data_Entry_2017*.csv, train_val_list.txt, test_list.txt and images/ (or images_0XX/images/)."


def load_nih(
    root,
    *,
    labels: str | Sequence[str] = "14",
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
    """Load ChestX-ray14 into ``train`` / ``validation`` / ``test`` (official test list).

    Args:
        root: the ChestX-ray14 folder.
        labels: ``"14"``, ``"15"`` (with "No Finding") or a list of names.
        validation_fraction: share of train_val patients held out as ``validation`` (0 for none).
        seed: seed of that patient-level hold-out.
        frontal_only: kept for a uniform signature (all NIH images are PA or AP).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "nih", _LAYOUT)
    label_names = resolve_label_names(labels, NIH_LABEL_SETS, "nih")
    unknown = sorted(set(label_names) - set(NIH_LABEL_SETS["15"]))
    if unknown:
        raise ValueError(f"load_nih: unknown label name(s) {unknown}; ChestX-ray14 has {list(NIH_LABEL_SETS['15'])}.")
    csv_path = find_first(root, _CSV_NAMES)
    if csv_path is None:
        raise FileNotFoundError(f"load_nih: none of {list(_CSV_NAMES)} under {str(root)!r}.")
    frame = read_table(csv_path, "nih", _REQUIRED, what="ChestX-ray14 Data_Entry CSV")
    table = _table(frame, root, label_names, str(csv_path))
    test_names = _read_list(root / "test_list.txt")
    train_val_names = _read_list(root / "train_val_list.txt")
    index = frame["Image Index"].astype(str)
    train_val = table[index.isin(train_val_names).to_numpy()]
    tables = {}
    if validation_fraction > 0:
        parts = split_by_patient(train_val, (1 - validation_fraction, validation_fraction), seed, ("train", "validation"))
        tables.update(parts)
    else:
        tables["train"] = train_val
    tables["test"] = table[index.isin(test_names).to_numpy()]
    if frontal_only:
        tables = {split: part[part["is_frontal"]] for split, part in tables.items()}
    return build_dataset_dict(
        tables, collection="nih", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        extra_features={"age": Value("float32"), "sex": Value("string"), "follow_up": Value("int32")},
    )


def _read_list(path: Path) -> set[str]:
    require_file(path, "nih", "official split list")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _image_locations(root: Path) -> dict[str, str]:
    """File name -> path for the Kaggle-style ``images_0XX/images/`` folders (scanned once)."""
    locations = {}
    for folder in sorted(root.glob("images_*/images")):
        with os.scandir(folder) as entries:
            for entry in entries:
                locations.setdefault(entry.name, entry.path)
    return locations


def _table(frame: pd.DataFrame, root: Path, label_names: Sequence[str], source: str) -> pd.DataFrame:
    vocabulary = set(NIH_LABEL_SETS["15"])
    findings = frame["Finding Labels"].fillna("").astype(str).map(lambda cell: [t.strip() for t in cell.split("|") if t.strip()])
    bad = sorted({token for tokens in findings for token in tokens} - vocabulary)
    if bad:
        raise ValueError(f"load_nih: {source}: unknown finding name(s) {bad[:10]} in 'Finding Labels'.")
    position = {name: column for column, name in enumerate(label_names)}
    values = np.zeros((len(frame), len(label_names)), dtype=np.float32)
    for row, tokens in enumerate(findings):
        for token in tokens:
            if token in position:
                values[row, position[token]] = 1.0
    names = frame["Image Index"].astype(str)
    flat = root / "images"
    locations = {} if flat.is_dir() else _image_locations(root)
    paths = [locations.get(name, str(flat / name)) for name in names]
    views = frame["View Position"].fillna("").astype(str).str.upper()
    return pd.DataFrame({
        "image_path": paths,
        "labels": label_matrix_rows(values),
        "view": views.to_numpy(),
        "is_frontal": views.isin(["PA", "AP"]).to_numpy(),
        "patient_id": frame["Patient ID"].astype(str).to_numpy(),
        "study_id": names.str.replace(".png", "", regex=False).to_numpy(),
        "age": pd.to_numeric(frame.get("Patient Age"), errors="coerce") if "Patient Age" in frame else np.nan,
        "sex": frame["Patient Gender"].fillna("").astype(str) if "Patient Gender" in frame else "",
        "follow_up": pd.to_numeric(frame["Follow-up #"], errors="coerce").fillna(-1).astype("int32")
        if "Follow-up #" in frame else -1,
    })

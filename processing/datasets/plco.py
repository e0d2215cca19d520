"""PLCO chest X-ray arm (Oken et al., JAMA 2011), via NCI CDAS: images + one row per image with
follow-up for mortality (CheXFound's opportunistic-risk task).

CDAS delivers the images (scanned films, converted to PNG/TIFF) and a per-image CSV that the user
joins with the mortality file of their data request. The loader expects that joined CSV::

    <root>/<images>/<image_file_name>[.png]
    <csv_path>  image_file_name, plco_id, mortality_exitdays, is_dead, [is_dead_cvd], [xry_days], [split]

Column names are arguments (CDAS versions differ); the defaults are CheXFound's reader
(``image_file_name`` + ``.png``, targets ``is_dead`` all-cause and ``is_dead_cvd`` cardiovascular)
and CDAS's follow-up names. ``survival_time`` is in **years** from the radiograph
(``(time_column - exam_day_column) / 365.25``; without ``exam_day_column`` from randomisation) and
``survival_event`` is ``event_column`` (1 = died). Splits: ``split_column`` if the CSV has one
(values train/validation|val/test), else deterministic by participant (``plco_id``; CheXFound
used 70/10/20).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import build_dataset_dict, match_label_columns, read_table, require_root, split_by_patient

__all__ = ["load_plco"]

_DAYS_PER_YEAR = 365.25
_SPLIT_VALUES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}


def load_plco(
    root,
    *,
    csv_path=None,
    image_column: str = "image_file_name",
    image_suffix: str = ".png",
    patient_column: str = "plco_id",
    label_columns: Sequence[str] = ("is_dead", "is_dead_cvd"),
    time_column: str = "mortality_exitdays",
    event_column: str = "is_dead",
    exam_day_column: str | None = None,
    split_column: str | None = None,
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
    """Load PLCO radiographs with mortality labels and time-to-event columns.

    Args:
        root: folder the ``image_column`` paths are relative to.
        csv_path: the per-image CSV (default: the only ``*.csv``/``*.csv.gz`` in ``root``).
        image_column, image_suffix: image file name column and the suffix to add when it has none.
        patient_column: participant id (the split unit).
        label_columns: binary columns that form ``labels`` (matched by name).
        time_column, event_column, exam_day_column: follow-up in days, event flag, day of the
            radiograph (all since randomisation).
        split_column: optional column holding the split of each row.
        fractions, seed: patient-level split when there is no ``split_column``.
        frontal_only: accepted for a uniform signature (PLCO radiographs are PA).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "plco", "the PLCO image folder and a per-image CSV (csv_path=).")
    csv_path = Path(csv_path) if csv_path is not None else _only_csv(root)
    required = [image_column, patient_column, time_column, event_column] + ([exam_day_column] if exam_day_column else [])
    frame = read_table(csv_path, "plco", required + ([split_column] if split_column else []), what="PLCO image CSV")
    label_names = [str(name) for name in label_columns]
    columns = match_label_columns(frame.columns, label_names, str(csv_path))
    values = frame[[columns[name] for name in label_names]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"load_plco: {csv_path}: label columns must hold 0/1, found {sorted(set(values[bad].tolist()))[:5]}.")
    days = pd.to_numeric(frame[time_column], errors="coerce")
    if exam_day_column:
        days = days - pd.to_numeric(frame[exam_day_column], errors="coerce")
    if (days < 0).any():
        raise ValueError(f"load_plco: {csv_path}: {int((days < 0).sum())} row(s) have follow-up ending before the "
                         f"radiograph ({time_column} < {exam_day_column}).")
    events = pd.to_numeric(frame[event_column], errors="coerce")
    names = frame[image_column].astype(str)
    names = names.where(names.map(lambda name: Path(name).suffix != ""), names + image_suffix)
    table = pd.DataFrame({
        "image_path": [str(root / name) for name in names],
        "labels": list(values),
        "view": "PA",
        "patient_id": frame[patient_column].astype(str),
        "study_id": names.map(lambda name: Path(name).stem),
        "survival_time": (days / _DAYS_PER_YEAR).astype(np.float32),
        "survival_event": events.fillna(0).astype(bool),
    })
    unknown_time = table["survival_time"].isna()
    if unknown_time.any():
        raise ValueError(f"load_plco: {csv_path}: {int(unknown_time.sum())} row(s) have no {time_column}.")
    if split_column:
        split = frame[split_column].astype(str).str.lower().map(_SPLIT_VALUES)
        if split.isna().any():
            raise ValueError(f"load_plco: {csv_path}: column {split_column!r} has values other than train/val/test.")
        tables = {name: table[(split == name).to_numpy()] for name in ("train", "validation", "test")}
        _check_disjoint(tables, csv_path)
    else:
        tables = split_by_patient(table, fractions, seed)
    return build_dataset_dict(
        tables, collection="plco", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir, with_survival=True,
    )


def _only_csv(root: Path) -> Path:
    candidates = sorted([*root.glob("*.csv"), *root.glob("*.csv.gz")])
    if len(candidates) != 1:
        raise FileNotFoundError(f"load_plco: pass csv_path=; found {len(candidates)} CSV file(s) in {str(root)!r}.")
    return candidates[0]


def _check_disjoint(tables: dict[str, pd.DataFrame], csv_path) -> None:
    seen: dict[str, str] = {}
    for split, table in tables.items():
        for patient in set(table["patient_id"]):
            if patient in seen and seen[patient] != split:
                raise ValueError(f"load_plco: {csv_path}: participant {patient} is in both {seen[patient]!r} and "
                                 f"{split!r}; the split column must keep each participant in one split.")
            seen[patient] = split

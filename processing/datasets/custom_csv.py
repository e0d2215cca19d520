"""Your own data: a CSV of image files plus label columns (and optionally a report column).

::

    image,patient,Cardiomegaly,Edema,report
    scans/0001.png,P1,1,0,"FINDINGS: Enlarged heart. IMPRESSION: Cardiomegaly."
    scans/0002.dcm,P1,0,,""
    /data/other/0003.jpg,P2,-1,1,"..."

:func:`load_csv` reads it into the cxrfm schema (the features of every collection loader). Image
paths are relative to ``image_root`` (default: the CSV's folder) unless absolute; PNG, JPEG and
DICOM decode as in every loader. Label cells hold 1 (present), 0 (absent), blank (not mentioned,
NaN) or -1 (uncertain, mapped by ``uncertainty``). Rows are split by patient with the seeded hash
of :func:`patient_level_split` (same ids + seed -> same split on any machine), or by a split column.

Bad rows are skipped and counted in the result's ``skipped`` record (or raise with ``strict=True``),
each with a reason: ``missing image`` (empty cell or no such file), ``invalid label`` (a cell that
is not 1, 0, -1 or blank), ``missing patient id``, ``unreadable image`` (with ``verify_images``).
A CSV in which every row is skipped raises a ValueError naming the most common reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import SPLIT_NAMES, is_frontal_view, normalize_view
from ._io import (
    SkippedRows,
    _RowError,
    _skip_or_raise,
    _sections,
    apply_uncertainty_policy,
    build_dataset_dict,
    label_matrix_rows,
    raise_all_skipped,
    read_table,
    split_by_patient,
)

logger = logging.getLogger(__name__)

__all__ = ["load_csv"]

_SPLIT_VALUES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}
_ALLOWED_LABEL_VALUES = (1.0, 0.0, -1.0)


def load_csv(
    path,
    *,
    image_column: str = "image",
    label_columns: Sequence[str] | None = None,
    report_column: str | None = None,
    patient_column: str | None = None,
    study_column: str | None = None,
    view_column: str | None = None,
    split_column: str | None = None,
    image_root=None,
    uncertainty: str = "ignore",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load a CSV of image paths and label columns into a ``DatasetDict`` (``train``/``validation``/``test``).

    Args:
        path: the CSV file (plain, ``.gz`` or ``.zip``).
        image_column: column of image paths.
        label_columns: label columns, in the order of the ``labels`` vector (their names become the
            label names). Default: every column not named by another argument.
        report_column: optional free-text report column (``findings``/``impression`` are extracted
            from it as for MIMIC-CXR).
        patient_column: patient id column; rows of one patient stay in one split. Without it each
            image counts as its own patient.
        study_column: optional study id column.
        view_column: optional view column ("PA", "AP", "LATERAL", ...); without it ``view`` is ""
            and ``is_frontal`` True.
        split_column: optional column with train/validation/test (also val, valid, dev) per row;
            it replaces the hashed split, and a patient found in two splits is an error.
        image_root: folder that relative image paths start from (default: the CSV's folder).
        uncertainty: what -1 means: ``"ignore"`` (NaN), ``"ones"`` or ``"zeros"``.
        fractions, seed: the hashed patient-level split.
        frontal_only: keep PA/AP rows (needs ``view_column``).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    Returns:
        ``DatasetDict`` (``IterableDatasetDict`` when streaming) with attribute ``skipped``.
    """
    path = Path(path)
    named = [column for column in (image_column, report_column, patient_column, study_column, view_column,
                                   split_column) if column]
    frame = read_table(path, "csv", named + list(label_columns or []), what="CSV", dtype=str, keep_default_na=False)
    if label_columns is None:
        label_columns = [column for column in frame.columns if column not in named]
    label_names = [str(column) for column in label_columns]
    if not label_names:
        raise ValueError(f"load_csv: {str(path)!r} has no label columns besides {named}; pass label_columns=.")
    overlap = sorted(set(label_names) & set(named))
    if overlap:
        raise ValueError(f"load_csv: column(s) {overlap} cannot be both a label and another column.")
    if frontal_only and view_column is None:
        raise ValueError("load_csv: frontal_only=True needs view_column (the CSV's view of each image).")
    root = Path(image_root) if image_root is not None else path.parent
    skipped = SkippedRows("csv")
    table = _rows(frame, path, root, image_column, label_names, report_column, patient_column, study_column,
                  view_column, split_column, uncertainty, skipped, strict)
    if table.empty:
        if skipped.count:
            raise_all_skipped(skipped, len(frame))
        raise ValueError(f"load_csv: {str(path)!r} has no data rows.")
    if frontal_only:
        table = table[table["is_frontal"].to_numpy(dtype=bool)]
    if split_column:
        tables = {name: table[table["split"] == name].drop(columns=["split"]) for name in SPLIT_NAMES}
        _check_disjoint(tables, path, patient_column)
    else:
        if patient_column is None:
            logger.info("load_csv: no patient_column: each image is its own patient in the split.")
        tables = split_by_patient(table, fractions, seed)
    return build_dataset_dict(
        tables, collection="csv", label_names=label_names, streaming=streaming, strict=strict,
        labels_only=labels_only, verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        skipped=skipped,
    )


def _rows(frame, path, root, image_column, label_names, report_column, patient_column, study_column,
          view_column, split_column, uncertainty, skipped: SkippedRows, strict: bool) -> pd.DataFrame:
    """Validate each CSV row (bad rows skipped with their reason) and build the loader row table."""
    numbers, problems = _label_values(frame, label_names)
    values = label_matrix_rows(apply_uncertainty_policy(numbers, uncertainty))
    rows = []
    for index, record in enumerate(frame.to_dict("records")):
        line = f"{path}:{index + 2}"  # 1-based, after the header line
        image = str(record[image_column]).strip()
        try:
            if not image:
                raise _RowError(line, f"missing image: empty {image_column!r} cell")
            if problems[index]:
                raise _RowError(line, f"invalid label: {problems[index]}")
            patient = str(record[patient_column]).strip() if patient_column else ""
            if patient_column and not patient:
                raise _RowError(line, f"missing patient id: empty {patient_column!r} cell")
            split = ""
            if split_column:
                split = _SPLIT_VALUES.get(str(record[split_column]).strip().lower(), "")
                if not split:
                    raise _RowError(line, f"invalid split: {record[split_column]!r} in {split_column!r} "
                                          "(expected train/validation/test)")
        except _RowError as error:
            _skip_or_raise(error, "metadata", skipped, strict)
            continue
        image_path = Path(image).expanduser()
        image_path = image_path if image_path.is_absolute() else root / image_path
        view = normalize_view(record[view_column]) if view_column else ""
        report = str(record[report_column]).strip() if report_column else ""
        findings, impression = _sections(report) if report else ("", "")
        rows.append({
            "image_path": str(image_path),
            "labels": values[index],
            "report": report,
            "findings": findings,
            "impression": impression,
            "view": view,
            "is_frontal": is_frontal_view(view) if view_column else True,
            "patient_id": patient or str(image_path),
            "study_id": str(record[study_column]).strip() if study_column else "",
            "split": split,
        })
    columns = ["image_path", "labels", "report", "findings", "impression", "view", "is_frontal", "patient_id",
               "study_id", "split"]
    table = pd.DataFrame(rows, columns=columns)
    return table if split_column else table.drop(columns=["split"])


def _label_values(frame: pd.DataFrame, label_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(N, K) label matrix (1/0/-1/NaN) and per row "" or its first bad cell, described."""
    text = frame[list(label_names)].apply(lambda column: column.str.strip())
    numbers = text.apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    blank = (text == "").to_numpy()
    bad = (np.isnan(numbers) & ~blank) | (~np.isnan(numbers) & ~np.isin(numbers, _ALLOWED_LABEL_VALUES))
    problems = []
    for row in range(len(frame)):
        columns = np.flatnonzero(bad[row])
        if columns.size:
            column = label_names[columns[0]]
            problems.append(f"column {column!r} has {text.iat[row, columns[0]]!r} (expected 1, 0, -1 or blank)")
        else:
            problems.append("")
    numbers[bad] = math.nan  # such rows are skipped; NaN keeps the uncertainty check quiet
    return numbers, problems


def _check_disjoint(tables: dict[str, pd.DataFrame], path: Path, patient_column: str | None) -> None:
    if patient_column is None:
        return
    seen: dict[str, str] = {}
    for split, table in tables.items():
        for patient in set(table["patient_id"]):
            if seen.setdefault(patient, split) != split:
                raise ValueError(f"load_csv: {str(path)!r}: patient {patient!r} is in both {seen[patient]!r} and "
                                 f"{split!r}; the split column must keep each patient in one split.")

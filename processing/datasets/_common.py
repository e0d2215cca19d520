"""Shared schema, label sets and split helpers for every cxrfm dataset loader.

Every loader (`load_<collection>`) and the synthetic phantom set return rows with the features of
:func:`cxr_features`, so models, recipes and evaluation read any collection the same way:

==================  ==============================  ===============================================
column              feature                         meaning
==================  ==============================  ===============================================
``image``           ``Image()`` (lazy decode)       a local path (real loaders) or PNG bytes
``image_path``      ``string``                      the file the image came from ("" if in memory)
``labels``          ``List(float32, length=K)``     1 = present, 0 = absent, NaN = not mentioned /
                                                    uncertain-and-ignored; K = ``len(label_names)``
``positive_labels`` ``List(ClassLabel(names))``     indices of the labels equal to 1 (derived); its
                                                    ``ClassLabel`` carries the label names
``report``          ``string``                      full free-text report ("" when absent)
``findings``        ``string``                      FINDINGS section ("" when absent)
``impression``      ``string``                      IMPRESSION section ("" when absent)
``view``            ``string``                      canonical view: "PA", "AP", "LATERAL", "LL", ...
``is_frontal``      ``bool``                        PA/AP (any frontal projection)
``patient_id``      ``string``
``study_id``        ``string``
optional            (``with_masks=True``)
``boxes``           ``List(List(float32, 4))``      boxes (x_min, y_min, x_max, y_max) in pixels
``box_labels``      ``List(ClassLabel(names))``     the finding each box/mask belongs to
``masks``           ``List(Image())``               one binary mask per box (same order)
optional            (``with_survival=True``)
``survival_time``   ``float32``                     follow-up time (years)
``survival_event``  ``bool``                        True = event observed, False = censored
==================  ==============================  ===============================================

Why label names live in a ``ClassLabel``: `datasets` does not serialise a feature's ``id`` field
(checked on datasets 5.2), and ``DatasetInfo`` is not carried by every transform, whereas a
``ClassLabel``'s names are part of the column type. They survive ``save_to_disk``/``load_from_disk``,
``filter``, ``select``, ``train_test_split``, streaming and any ``map`` that keeps the column, so
:func:`get_label_names` recovers them from any dataset, split or ``Features``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    IterableDatasetDict,
    List,
    Value,
)

# Label sets live in the registry module; re-exported here for code written before it existed.
from ..labels import CHEXPERT_5, CHEXPERT_13, CHEXPERT_14, CXR_LT_40  # noqa: F401

__all__ = [
    "CXR_LT_40",
    "CHEXPERT_14",
    "CHEXPERT_13",
    "CHEXPERT_5",
    "FRONTAL_VIEWS",
    "SPLIT_NAMES",
    "cxr_features",
    "get_label_names",
    "encode_labels",
    "positive_label_ids",
    "labels_to_tensor",
    "label_mask",
    "collate_labels",
    "normalize_view",
    "is_frontal_view",
    "patient_level_split",
    "ensure_cxr_schema",
]

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")

# Canonical frontal projections (MIMIC-CXR `ViewPosition` vocabulary); everything else is not frontal.
FRONTAL_VIEWS: frozenset[str] = frozenset({"PA", "AP", "AP AXIAL", "AP LLD", "AP RLD", "PA LLD", "PA RLD"})
_VIEW_SYNONYMS = {
    "POSTEROANTERIOR": "PA",
    "ANTEROPOSTERIOR": "AP",
    "AP SUPINE": "AP",
    "AP_SUPINE": "AP",
    "APS": "AP",
    "L": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
}

POSITIVE_LABELS_COLUMN = "positive_labels"


def cxr_features(
    label_names: Sequence[str],
    *,
    with_report: bool = True,
    with_masks: bool = False,
    with_survival: bool = False,
    with_image: bool = True,
    extra: Mapping[str, object] | None = None,
) -> Features:
    """The one schema every cxrfm loader produces (see the module docstring for each column).

    Args:
        label_names: the K finding names, in the order of the ``labels`` vector.
        with_report: add ``report``, ``findings`` and ``impression`` string columns.
        with_masks: add ``boxes`` (pixel x_min, y_min, x_max, y_max), ``box_labels`` and ``masks``.
        with_survival: add ``survival_time`` (float32) and ``survival_event`` (bool).
        with_image: add the ``image`` column; False is the labels-only schema (``image_path`` stays).
        extra: collection-specific columns (name -> `datasets` feature), e.g. ``{"age": Value("float32")}``.
    """
    names = _check_label_names(label_names)
    columns: dict[str, object] = {"image": Image()} if with_image else {}
    columns.update({
        "image_path": Value("string"),
        "labels": List(Value("float32"), length=len(names)),
        POSITIVE_LABELS_COLUMN: List(ClassLabel(names=names)),
    })
    if with_report:
        columns.update(report=Value("string"), findings=Value("string"), impression=Value("string"))
    columns.update(
        view=Value("string"), is_frontal=Value("bool"), patient_id=Value("string"), study_id=Value("string")
    )
    if with_masks:
        columns.update(
            boxes=List(List(Value("float32"), length=4)),
            box_labels=List(ClassLabel(names=names)),
            masks=List(Image()),
        )
    if with_survival:
        columns.update(survival_time=Value("float32"), survival_event=Value("bool"))
    for name, feature in (extra or {}).items():
        if name in columns:
            raise ValueError(f"cxr_features: extra column {name!r} clashes with a standard column.")
        columns[name] = feature
    return Features(columns)


def _check_label_names(label_names: Sequence[str]) -> list[str]:
    if isinstance(label_names, str):
        raise TypeError("label_names must be a sequence of names, got a single string.")
    names = [str(name) for name in label_names]
    if not names:
        raise ValueError("label_names is empty: a CXR dataset needs at least one label.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"label_names has duplicates: {duplicates}.")
    return names


def get_label_names(dataset_or_features) -> list[str]:
    """Label names of a cxrfm dataset, read from the ``positive_labels`` ``ClassLabel``.

    Accepts a ``Dataset``, ``IterableDataset``, ``DatasetDict``/``IterableDatasetDict`` (all splits
    must agree) or a ``Features``.
    """
    if isinstance(dataset_or_features, (DatasetDict, IterableDatasetDict)):
        per_split = {split: get_label_names(ds) for split, ds in dataset_or_features.items()}
        distinct = {tuple(names) for names in per_split.values()}
        if len(distinct) != 1:
            raise ValueError(f"Splits disagree on label names: {per_split}.")
        return list(distinct.pop())
    if isinstance(dataset_or_features, Features):
        features = dataset_or_features
    elif isinstance(dataset_or_features, (Dataset, IterableDataset)):
        features = dataset_or_features.features
        if features is None:
            raise ValueError(
                "The dataset has no features (an IterableDataset without a schema); cannot read label names."
            )
    else:
        kind = type(dataset_or_features).__name__
        raise TypeError(f"Expected a datasets Dataset/DatasetDict/Features, got {kind}.")
    feature = features.get(POSITIVE_LABELS_COLUMN)
    inner = getattr(feature, "feature", None)
    if not isinstance(inner, ClassLabel):
        raise ValueError(
            f"No label names: the dataset has no {POSITIVE_LABELS_COLUMN!r} List(ClassLabel) column "
            f"(columns: {sorted(features)}). Build datasets with cxrfm's cxr_features()."
        )
    return list(inner.names)


def encode_labels(values: Mapping[str, object], label_names: Sequence[str]) -> list[float]:
    """Label vector from a name -> value mapping, matched by name (never by position).

    Values: 1/True = present, 0/False = absent, None/NaN/missing = not mentioned (NaN).
    Anything else (e.g. the CheXpert uncertain -1) is an error: apply the uncertainty policy first.
    """
    vector = []
    for name in label_names:
        value = values.get(name)
        number = float("nan") if value is None else float(value)
        if math.isnan(number):
            vector.append(number)
            continue
        if number not in (0.0, 1.0):
            raise ValueError(
                f"Label {name!r} has value {value!r}; expected 1, 0 or NaN (map uncertain values first)."
            )
        vector.append(number)
    return vector


def positive_label_ids(labels: Sequence[float]) -> list[int]:
    """Indices of the labels equal to 1 (the ``positive_labels`` column)."""
    return [index for index, value in enumerate(labels) if value == 1.0]


def labels_to_tensor(labels) -> torch.Tensor:
    """(B, K) float32 tensor from a batch of label vectors (lists, arrays or tensors); NaN is kept."""
    if isinstance(labels, torch.Tensor):
        tensor = labels.to(torch.float32)
    elif len(labels) and isinstance(labels[0], torch.Tensor):
        tensor = torch.stack([row.to(torch.float32) for row in labels])
    else:
        tensor = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if tensor.ndim != 2:
        raise ValueError(f"labels must be (B, K); got shape {tuple(tensor.shape)}.")
    return tensor


def label_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, K) bool mask of the labels that carry information (not NaN), for masked BCE / metrics."""
    return ~torch.isnan(labels)


def collate_labels(rows: Sequence[Mapping[str, object]]) -> dict[str, torch.Tensor]:
    """Stack the ``labels`` of dataset rows into ``labels`` (B, K, NaN -> 0) and ``label_mask`` (B, K)."""
    labels = labels_to_tensor([row["labels"] for row in rows])
    mask = label_mask(labels)
    return {"labels": torch.nan_to_num(labels, nan=0.0), "label_mask": mask}


def normalize_view(raw_view: object) -> str:
    """Canonical upper-case view name ("PA", "AP", "LATERAL", "LL", ...); "" when unknown/missing."""
    if raw_view is None or (isinstance(raw_view, float) and math.isnan(raw_view)):
        return ""
    view = " ".join(str(raw_view).replace("-", " ").upper().split())
    return _VIEW_SYNONYMS.get(view, view)


def is_frontal_view(view: str) -> bool:
    """True for PA/AP projections (including decubitus/axial variants)."""
    return normalize_view(view) in FRONTAL_VIEWS


def _patient_rank_key(patient_id: str, seed: int) -> bytes:
    # A seeded hash orders patients independently of row order and platform (no Python hash()).
    return hashlib.blake2b(f"{seed}\x00{patient_id}".encode(), digest_size=16).digest()


def patient_level_split(
    patient_ids: Sequence[object],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    split_names: Sequence[str] = SPLIT_NAMES,
) -> dict[str, np.ndarray]:
    """Deterministic patient-level split: row indices per split, no patient in two splits.

    Patients are ordered by a seeded hash of their id, then cut into consecutive groups holding
    ``round(cumsum(fractions) * n_patients)`` patients, so the result depends only on the set of
    ids and the seed (not on row order, process or platform).

    Args:
        patient_ids: one id per row (rows of one patient share an id).
        fractions: fraction of patients per split, non-negative, summing to 1.
        seed: changes the assignment.
        split_names: one name per fraction.
    Returns:
        ``{split_name: sorted int64 array of row indices}``.
    """
    if len(fractions) != len(split_names):
        raise ValueError(f"fractions {tuple(fractions)} and split_names {tuple(split_names)} differ in length.")
    fractions_array = np.asarray(fractions, dtype=np.float64)
    if (fractions_array < 0).any() or not math.isclose(fractions_array.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}.")
    def missing(pid: object) -> bool:
        return pid is None or (isinstance(pid, float) and math.isnan(pid)) or str(pid) == ""

    if any(missing(pid) for pid in patient_ids):
        raise ValueError("patient_level_split: some rows have no patient id (None, NaN or empty).")
    ids = [str(pid) for pid in patient_ids]
    unique = sorted(set(ids), key=lambda pid: _patient_rank_key(pid, seed))
    bounds = np.round(np.cumsum(fractions_array) * len(unique)).astype(int)
    bounds[-1] = len(unique)
    split_of_patient: dict[str, int] = {}
    start = 0
    for split_index, stop in enumerate(bounds):
        for pid in unique[start:stop]:
            split_of_patient[pid] = split_index
        start = stop
    row_split = np.fromiter((split_of_patient[pid] for pid in ids), dtype=np.int64, count=len(ids))
    return {name: np.flatnonzero(row_split == index) for index, name in enumerate(split_names)}


_TEXT_DEFAULTS = ("report", "findings", "impression", "view", "study_id")


def ensure_cxr_schema(data, label_names: Sequence[str] | None = None):
    """Bring a plain ``Dataset``/``DatasetDict`` (at least ``image`` and ``labels``) to the cxrfm schema.

    Missing columns are added: ``positive_labels`` (from ``labels``; its ``ClassLabel`` carries
    ``label_names``), ``image_path`` (the path when ``image`` holds paths, else ""), ``report``,
    ``findings``, ``impression``, ``view`` (""), ``is_frontal`` (True: a view-less image is taken as
    frontal, as the loaders of all-frontal collections do), ``patient_id`` and ``study_id`` (one per
    row, ``"<split>-<row>"``, so the rows count as independent patients). ``labels`` becomes a
    float32 vector of fixed length; a string ``image`` column (paths) becomes ``Image()``.

    Args:
        data: ``Dataset`` or ``DatasetDict`` (map-style; streaming sets have no schema to inspect).
        label_names: names of the ``labels`` entries; default: the names already in the data
            (``positive_labels`` or a ``ClassLabel``), else ``label_0 ... label_{K-1}``.
    Raises:
        ValueError naming the missing column (``labels``, or ``image``/``image_path``), or the
        ``labels`` column when it is not a vector of numbers of one length.
    """
    if isinstance(data, DatasetDict):
        return DatasetDict({split: _ensure_split(ds, label_names, split) for split, ds in data.items()})
    if isinstance(data, Dataset):
        return _ensure_split(data, label_names, str(data.split or "data"))
    raise TypeError(f"ensure_cxr_schema: expected a datasets Dataset or DatasetDict, got {type(data).__name__}.")


def _ensure_split(dataset: Dataset, label_names: Sequence[str] | None, split: str) -> Dataset:
    features = dataset.features
    if "labels" not in features:
        raise ValueError(
            f"ensure_cxr_schema [{split}]: the dataset has no 'labels' column (columns: {sorted(features)}); "
            "the cxrfm schema needs one 0/1/NaN vector per image."
        )
    if "image" not in features and "image_path" not in features:
        raise ValueError(
            f"ensure_cxr_schema [{split}]: the dataset has no 'image' (or 'image_path') column "
            f"(columns: {sorted(features)})."
        )
    width = _label_width(dataset, split)
    names = list(label_names) if label_names is not None else _existing_label_names(features, width)
    if len(names) != width:
        raise ValueError(f"ensure_cxr_schema [{split}]: {len(names)} label names for 'labels' vectors of length {width}.")
    image_is_path = "image" in features and isinstance(features["image"], Value)
    with_image = "image" in features
    missing = [name for name in ("image_path", POSITIVE_LABELS_COLUMN, *_TEXT_DEFAULTS, "is_frontal", "patient_id")
               if name not in features]

    def fill(batch, indices):
        size = len(indices)
        if "image_path" in missing:
            batch["image_path"] = list(batch["image"]) if image_is_path else [""] * size
        if POSITIVE_LABELS_COLUMN in missing:
            batch[POSITIVE_LABELS_COLUMN] = [positive_label_ids(_float_list(row)) for row in batch["labels"]]
        for name in _TEXT_DEFAULTS:
            if name in missing and name != "study_id":
                batch[name] = [""] * size
        if "is_frontal" in missing:
            views = batch["view"]
            batch["is_frontal"] = [True if not view else is_frontal_view(view) for view in views]
        if "patient_id" in missing:
            batch["patient_id"] = [f"{split}-{index}" for index in indices]
        if "study_id" in missing:
            batch["study_id"] = list(batch["patient_id"])
        batch["labels"] = [_float_list(row) for row in batch["labels"]]
        return batch

    standard = cxr_features(names, with_image=with_image)
    extra = {name: feature for name, feature in features.items() if name not in standard}
    target = cxr_features(names, with_image=with_image, extra=extra)
    if not missing and features == target:
        return dataset  # already the cxrfm schema: no rewrite
    source = dataset.cast_column("image", Value("string")) if image_is_path else dataset
    filled = source.map(fill, batched=True, with_indices=True, features=_with_plain_image(target, image_is_path))
    return filled.cast(target) if image_is_path else filled


def _with_plain_image(features: Features, image_is_path: bool) -> Features:
    """``map`` writes the path strings first; the cast to ``Image()`` follows (a map cannot change types twice)."""
    if not image_is_path:
        return features
    plain = features.copy()
    plain["image"] = Value("string")
    return plain


def _float_list(row) -> list[float]:
    return [math.nan if value is None else float(value) for value in row]


def _label_width(dataset: Dataset, split: str) -> int:
    feature = dataset.features["labels"]
    length = getattr(feature, "length", -1)
    inner = getattr(feature, "feature", None)
    if inner is None or not (isinstance(inner, Value) and (inner.dtype.startswith(("float", "int", "uint", "bool")))):
        raise ValueError(
            f"ensure_cxr_schema [{split}]: column 'labels' must hold vectors of numbers (1 present, 0 absent, "
            f"NaN unknown), got feature {feature}."
        )
    if length is not None and length > 0:
        return int(length)
    if len(dataset) == 0:
        raise ValueError(f"ensure_cxr_schema [{split}]: empty split with variable-length 'labels': cannot tell K.")
    widths = {len(row) for row in dataset.select_columns(["labels"])["labels"]}
    if len(widths) != 1:
        raise ValueError(f"ensure_cxr_schema [{split}]: 'labels' vectors have different lengths {sorted(widths)}.")
    return widths.pop()


def _existing_label_names(features: Features, width: int) -> list[str]:
    inner = getattr(features.get(POSITIVE_LABELS_COLUMN), "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    return [f"label_{index}" for index in range(width)]

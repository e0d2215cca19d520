"""Plumbing shared by the collection loaders (``load_<collection>``).

One path from the official files to `datasets` objects:

1. each loader reads its metadata into one table per split (a ``pandas.DataFrame`` whose columns
   are the :func:`~._common.cxr_features` columns: ``image_path``, ``labels`` (one float vector
   per row, matched **by column name**), ``view``, ``patient_id``, ``study_id``, optional
   ``report`` / ``report_path``, boxes, survival and collection extras);
2. :func:`build_dataset_dict` checks every row (the image file exists, optionally decodes; the
   report file exists and is not empty), skips and counts bad rows in a :class:`SkippedRows`
   (each path logged) or raises a clear error naming the file when ``strict=True``, and writes a
   ``DatasetDict`` (``Dataset.from_generator``; cached by `datasets` under ``cache_dir``) or, with
   ``streaming=True``, an ``IterableDatasetDict`` whose rows are checked and read lazily, sharded
   so that ``datasets.distributed.split_dataset_by_node`` and DataLoader workers split by shard.

**Images.** ``image`` is an ``Image()`` feature holding the file path and decoded lazily. PNG and
JPEG are decoded by Pillow as usual. DICOM (``.dcm``/``.dicom``) and JSRT's headerless 12-bit
``.IMG`` files are not Pillow formats, so :func:`register_cxr_image_plugins` (called by every
loader) registers two Pillow plugins through which ``Image()`` decodes them: DICOM goes through
:func:`cxrfm.processing.image_processing_cxr.load_cxr_image` (Modality LUT, VOI LUT/window,
MONOCHROME1 inversion) and arrives as a 16-bit grey ``PIL.Image`` (mode ``I;16``, 0 = black,
65535 = white), the same representation as a 16-bit PNG, which ``CXRImageProcessor`` reads at full
precision. Chosen over a per-row ``with_transform`` because the plugin keeps one code path for
map-style, streaming, ``cast_column`` and concatenated collections, and decodes each file once.
DataLoader workers started by ``fork`` (the Linux default) inherit the registration; with
``spawn``/``forkserver`` call ``register_cxr_image_plugins()`` in ``worker_init_fn``.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from PIL import Image as PILImage
from PIL import ImageFile

from ._common import SPLIT_NAMES, cxr_features, is_frontal_view, normalize_view, patient_level_split, positive_label_ids

logger = logging.getLogger(__name__)

__all__ = [
    "SkippedRows",
    "register_cxr_image_plugins",
    "read_jsrt_raw",
    "require_root",
    "require_file",
    "find_first",
    "read_table",
    "match_label_columns",
    "resolve_label_names",
    "apply_uncertainty_policy",
    "parse_list_cell",
    "split_by_patient",
    "frontal_mask",
    "label_matrix_rows",
    "read_text_lenient",
    "natural_key",
    "png_bytes",
    "build_dataset_dict",
    "raise_all_skipped",
]

UNCERTAINTY_POLICIES = ("ignore", "ones", "zeros")
_POLICY_ALIASES = {
    "ignore": "ignore", "u-ignore": "ignore", "nan": "ignore",
    "ones": "ones", "u-ones": "ones", "u_ones": "ones",
    "zeros": "zeros", "u-zeros": "zeros", "u_zeros": "zeros",
}
_JSRT_SIDE = 2048  # JSRT: 2048 x 2048, 12-bit, big-endian, no header (db.jsrt.or.jp)
_JSRT_BYTES = _JSRT_SIDE * _JSRT_SIDE * 2
_JSRT_MAX = 4095
_DICOM_SUFFIXES = (".dcm", ".dicom")
_LOGGED_SKIPS_PER_REASON = 20  # then one summary line, so a bad mount does not flood the log


# ------------------------------------------------------------------------------------------------
# Skip-and-count policy
# ------------------------------------------------------------------------------------------------


class SkippedRows:
    """Rows left out of a loaded collection: ``(split, path, reason)`` each, logged as they occur.

    A loader returns it as the ``skipped`` attribute of its ``DatasetDict``. In streaming mode the
    rows are checked while iterating, so the record fills up during iteration (per process: each
    DataLoader worker counts its own shards).
    """

    def __init__(self, collection: str):
        self.collection = collection
        self.entries: list[tuple[str, str, str]] = []
        self._logged: Counter = Counter()

    def add(self, split: str, path: str, reason: str) -> None:
        self.entries.append((split, path, reason))
        kind = reason.split(":")[0]
        self._logged[kind] += 1
        if self._logged[kind] <= _LOGGED_SKIPS_PER_REASON:
            logger.warning("%s [%s]: skipping %s (%s)", self.collection, split, path, reason)
        elif self._logged[kind] == _LOGGED_SKIPS_PER_REASON + 1:
            logger.warning("%s: further rows skipped for %r are counted, not logged.", self.collection, kind)

    @property
    def count(self) -> int:
        return len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, _, reason in self.entries))

    def by_split(self) -> dict[str, int]:
        return dict(Counter(split for split, _, _ in self.entries))

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.entries]

    def __repr__(self) -> str:
        return f"SkippedRows({self.collection!r}, count={self.count}, by_reason={self.by_reason()})"


class _RowError(Exception):
    """A row cannot be used: ``path`` and ``reason`` go to the skip record or the strict error."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _skip_or_raise(error: _RowError, split: str, skipped: SkippedRows, strict: bool) -> None:
    if strict:
        raise ValueError(
            f"{skipped.collection} [{split}]: {error.path}: {error.reason} "
            "(strict=True; pass strict=False to skip and count such rows)."
        )
    skipped.add(split, error.path, error.reason)


# ------------------------------------------------------------------------------------------------
# Pillow plugins: DICOM (through CXRImageProcessor's reader) and JSRT raw
# ------------------------------------------------------------------------------------------------


def _grey_to_pil16(grey: np.ndarray) -> PILImage.Image:
    """float grey in [0, 1] (1 = white) -> PIL ``I;16`` image (0..65535)."""
    return PILImage.fromarray(np.round(np.clip(grey, 0.0, 1.0) * 65535.0).astype(np.uint16))


class _CXRDicomImageFile(ImageFile.ImageFile):
    """Pillow view of a DICOM file, decoded by ``load_cxr_image`` when opened."""

    format = "CXRDICOM"
    format_description = "DICOM (decoded by cxrfm load_cxr_image)"

    def _open(self) -> None:
        head = self.fp.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise SyntaxError("not a DICOM Part-10 file")  # Pillow then tries its other formats
        from ..image_processing_cxr import load_cxr_image  # the processor's reader is the one truth

        self.fp.seek(0)
        name = repr(self.filename) if getattr(self, "filename", None) else "DICOM bytes"
        grey = load_cxr_image(self.fp.read(), name=name)  # raises ValueError naming the file
        image = _grey_to_pil16(grey)
        self._mode = image.mode
        self._size = image.size
        self.im = image.im
        self.tile = []


def read_jsrt_raw(data: bytes, name: str = "JSRT image") -> np.ndarray:
    """JSRT ``.IMG`` bytes -> uint16 ``(2048, 2048)``, 0 = black, 65535 = white (bone bright).

    The files hold 12-bit values, big-endian, no header, with the film convention (high = dark), so
    values are inverted and stretched from [0, 4095] to [0, 65535].
    """
    if len(data) != _JSRT_BYTES:
        raise ValueError(f"{name}: {len(data)} bytes; a JSRT .IMG file has {_JSRT_BYTES} (2048 x 2048 x 16 bit).")
    raw = np.frombuffer(data, dtype=">u2").reshape(_JSRT_SIDE, _JSRT_SIDE)
    inverted = _JSRT_MAX - np.clip(raw.astype(np.int32), 0, _JSRT_MAX)
    return np.round(inverted * (65535.0 / _JSRT_MAX)).astype(np.uint16)


class _JSRTRawImageFile(ImageFile.ImageFile):
    """Pillow view of a JSRT ``.IMG`` file (recognised by name suffix and exact size)."""

    format = "JSRTRAW"
    format_description = "JSRT 12-bit raw chest radiograph"

    def _open(self) -> None:
        filename = str(getattr(self, "filename", "") or "")
        if not filename.lower().endswith(".img"):
            raise SyntaxError("not a JSRT .IMG file")
        data = self.fp.read(_JSRT_BYTES + 1)
        if len(data) != _JSRT_BYTES:
            raise SyntaxError("not a JSRT .IMG file (wrong size)")
        image = PILImage.fromarray(read_jsrt_raw(data, repr(filename)))
        self._mode = image.mode
        self._size = image.size
        self.im = image.im
        self.tile = []


def register_cxr_image_plugins() -> None:
    """Let Pillow (and so ``datasets.Image()``) open DICOM and JSRT ``.IMG`` files. Idempotent.

    Both plugins accept any prefix and check the file themselves, and are registered after
    Pillow's own formats, so they only see files no built-in plugin recognised.
    """
    for plugin in (_CXRDicomImageFile, _JSRTRawImageFile):
        if plugin.format not in PILImage.OPEN:
            PILImage.register_open(plugin.format, plugin, lambda prefix: True)
    PILImage.register_extensions(_CXRDicomImageFile.format, list(_DICOM_SUFFIXES))
    PILImage.register_extension(_JSRTRawImageFile.format, ".img")


def _verify_image(path: str) -> None:
    """Decode ``path`` fully; raise :class:`_RowError` with the reason if it cannot be read."""
    try:
        with PILImage.open(path) as image:
            image.load()
    except Exception as error:  # Pillow/pydicom raise many types; the reason goes into the error
        raise _RowError(path, f"unreadable image: {type(error).__name__}: {error}") from error


# ------------------------------------------------------------------------------------------------
# Files and tables
# ------------------------------------------------------------------------------------------------


def require_root(root: str | os.PathLike, collection: str, layout_hint: str) -> Path:
    """``root`` as a Path; FileNotFoundError naming the collection and its expected layout."""
    if root is None:
        raise TypeError(f"load_{collection}: root is None; pass the folder of the downloaded collection.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"load_{collection}: root {str(path)!r} is not a directory. Expected the {collection} folder "
            f"as distributed: {layout_hint}"
        )
    return path


def require_file(path: Path, collection: str, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"load_{collection}: {what} {str(path)!r} not found.")
    return path


def find_first(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (paths relative to ``root``) that exists, else None."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    return None


def read_table(
    path: Path,
    collection: str,
    required: Sequence[str] = (),
    *,
    what: str = "metadata CSV",
    **read_kwargs,
) -> pd.DataFrame:
    """Read a CSV (plain, ``.gz`` or ``.zip``); error naming the file if it or a column is missing.

    Column names are stripped of surrounding spaces (SIIM writes ``" EncodedPixels"``).
    """
    require_file(Path(path), collection, what)
    try:
        frame = pd.read_csv(path, **read_kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"load_{collection}: cannot parse {what} {str(path)!r}: {error}") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(
            f"load_{collection}: {what} {str(path)!r} is missing column(s) {missing}; "
            f"found {list(frame.columns)}."
        )
    return frame


def _column_key(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def match_label_columns(
    columns: Iterable[str],
    label_names: Sequence[str],
    source: str,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """Map each label name to its column **by name** (case/space/underscore-insensitive).

    Args:
        columns: the table's column names.
        label_names: the wanted labels.
        source: the file the columns come from, for the error message.
        aliases: other spellings per label name (e.g. ``{"Other diseases": ["Other disease"]}``).
    Returns:
        ``{label_name: column_name}``; raises ValueError naming ``source`` and every missing label.
    """
    by_key = {}
    for column in columns:
        by_key.setdefault(_column_key(column), column)
    mapping, missing = {}, []
    for name in label_names:
        options = [name, *((aliases or {}).get(name, ()))]
        found = next((by_key[_column_key(option)] for option in options if _column_key(option) in by_key), None)
        if found is None:
            missing.append(name)
        else:
            mapping[name] = found
    if missing:
        raise ValueError(f"{source}: missing label column(s) {missing}; found columns {list(columns)}.")
    return mapping


def resolve_label_names(
    labels: str | Sequence[str],
    presets: Mapping[str, Sequence[str]],
    collection: str,
) -> list[str]:
    """A label subset given as a preset name (e.g. ``"5"``, ``"all"``) or an explicit list of names."""
    if isinstance(labels, str):
        if labels not in presets:
            raise ValueError(f"load_{collection}: unknown label set {labels!r}; choose one of {sorted(presets)} "
                             "or pass a list of label names.")
        return list(presets[labels])
    names = [str(name) for name in labels]
    if not names:
        raise ValueError(f"load_{collection}: labels is empty.")
    return names


def apply_uncertainty_policy(values: np.ndarray, policy: str) -> np.ndarray:
    """CheXpert-labeler values (1, 0, -1 uncertain, NaN blank) -> 1/0/NaN by the uncertainty policy.

    ``"ignore"`` (U-Ignore): -1 -> NaN; ``"ones"`` (U-Ones): -1 -> 1; ``"zeros"`` (U-Zeros): -1 -> 0
    (Irvin et al. 2019, CheXpert §3). Any value other than 1, 0, -1 or NaN is an error.
    """
    key = _POLICY_ALIASES.get(str(policy).lower())
    if key is None:
        raise ValueError(f"uncertainty policy {policy!r} unknown; choose one of {UNCERTAINTY_POLICIES} "
                         "(also accepted: 'U-Ignore', 'U-Ones', 'U-Zeros').")
    values = np.asarray(values, dtype=np.float32).copy()
    bad = ~np.isnan(values) & ~np.isin(values, (1.0, 0.0, -1.0))
    if bad.any():
        raise ValueError(f"label values must be 1, 0, -1 or blank; found {sorted(set(values[bad].tolist()))[:5]}.")
    values[values == -1.0] = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[key]
    return values


def parse_list_cell(cell: object, source: str) -> list[str]:
    """A CSV cell holding a Python-literal list of strings (PadChest ``Labels``) -> stripped names."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    try:
        values = ast.literal_eval(str(cell))
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"{source}: cannot parse list cell {str(cell)[:80]!r}: {error}") from error
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{source}: expected a list, got {str(cell)[:80]!r}.")
    return [str(value).strip() for value in values if str(value).strip()]


def split_by_patient(
    table: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    split_names: Sequence[str] = SPLIT_NAMES,
) -> dict[str, pd.DataFrame]:
    """Deterministic patient-level split of a table (``patient_id`` column); no patient in two splits."""
    indices = patient_level_split(table["patient_id"].tolist(), fractions=fractions, seed=seed, split_names=split_names)
    return {name: table.iloc[rows].reset_index(drop=True) for name, rows in indices.items()}


def frontal_mask(views: Iterable[str]) -> np.ndarray:
    return np.fromiter((is_frontal_view(view) for view in views), dtype=bool)


# ------------------------------------------------------------------------------------------------
# Building DatasetDict / IterableDatasetDict
# ------------------------------------------------------------------------------------------------


def _read_report(path: str) -> str:
    if not os.path.isfile(path):
        raise _RowError(path, "missing report: file not found")
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    if not text.strip():
        raise _RowError(path, "empty report: the file has no text")
    return text


def _sections(report: str) -> tuple[str, str]:
    from ..text import extract_sections

    sections = extract_sections(report)
    return sections["findings"], sections["impression"]


def _check_row(record: dict, verify_images: bool) -> dict:
    """File checks and report reading for one row; raises :class:`_RowError`."""
    path = record["image_path"]
    if not os.path.isfile(path):
        raise _RowError(path, "missing image: file not found")
    if verify_images:
        _verify_image(path)
    report_path = record.get("report_path")
    if report_path:
        record["report"] = _read_report(report_path)
        record["findings"], record["impression"] = _sections(record["report"])
    return record


def _to_example(record: dict, columns: Sequence[str], row_hook: Callable[[dict, dict], dict] | None) -> dict:
    """Table row -> dataset example with exactly ``columns``."""
    labels = [math.nan if value is None else float(value) for value in record["labels"]]
    view = normalize_view(record.get("view"))
    example = {
        "image": record["image_path"],
        "image_path": record["image_path"],
        "labels": labels,
        "positive_labels": positive_label_ids(labels),
        "report": _text(record.get("report")),
        "findings": _text(record.get("findings")),
        "impression": _text(record.get("impression")),
        "view": view,
        "is_frontal": bool(record["is_frontal"]) if "is_frontal" in record else is_frontal_view(view),
        "patient_id": str(record["patient_id"]),
        "study_id": _text(record.get("study_id")),
    }
    for column in columns:
        if column not in example:
            example[column] = record.get(column)
    if row_hook is not None:
        example = row_hook(example, record)
    return {column: example[column] for column in columns}


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _generate_examples(table: pa.Table, columns: Sequence[str], row_hook) -> Iterator[dict]:
    for record in table.to_pylist():
        yield _to_example(record, columns, row_hook)


def _generate_examples_lazily(
    ranges: list[tuple[int, int]],
    table: pa.Table,
    split: str,
    columns: Sequence[str],
    row_hook,
    verify_images: bool,
    skipped: SkippedRows,
    strict: bool,
    labels_only: bool = False,
) -> Iterator[dict]:
    for start, stop in ranges:  # one shard = one row range of the table
        for record in table.slice(start, stop - start).to_pylist():
            if not labels_only:
                try:
                    record = _check_row(record, verify_images)
                except _RowError as error:
                    _skip_or_raise(error, split, skipped, strict)
                    continue
            yield _to_example(record, columns, row_hook)


def _to_arrow(table: pd.DataFrame, collection: str) -> pa.Table:
    """The row table as Arrow: `datasets` fingerprints generator arguments by pickling them, which
    is fast for Arrow buffers and slow for pandas object columns (one Python object per cell)."""
    try:
        return pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ValueError(f"load_{collection}: cannot convert the row table to Arrow (internal error): {error}") from error


def _checked_table(
    table: pd.DataFrame, split: str, verify_images: bool, skipped: SkippedRows, strict: bool
) -> pd.DataFrame:
    """Map-style: check every row now (existence, optional decode, report text); drop bad rows."""
    exists = np.fromiter((os.path.isfile(path) for path in table["image_path"]), dtype=bool, count=len(table))
    for path in table["image_path"][~exists]:
        _skip_or_raise(_RowError(path, "missing image: file not found"), split, skipped, strict)
    table = table[exists]
    if not verify_images and "report_path" not in table.columns:
        return table.reset_index(drop=True)
    records = []
    for record in table.to_dict("records"):
        try:
            records.append(_check_row(record, verify_images))
        except _RowError as error:
            _skip_or_raise(error, split, skipped, strict)
    columns = [column for column in dict.fromkeys([*table.columns, "report", "findings", "impression"]) if column != "report_path"]
    return pd.DataFrame.from_records(records, columns=columns)


def build_dataset_dict(
    tables: Mapping[str, pd.DataFrame],
    *,
    collection: str,
    label_names: Sequence[str],
    streaming: bool = False,
    strict: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
    with_masks: bool = False,
    with_survival: bool = False,
    extra_features: Mapping[str, object] | None = None,
    row_hook: Callable[[dict, dict], dict] | None = None,
    skipped: SkippedRows | None = None,
    labels_only: bool = False,
) -> DatasetDict | IterableDatasetDict:
    """One ``DatasetDict`` (or ``IterableDatasetDict`` when ``streaming``) from per-split tables.

    Args:
        tables: ``{split: DataFrame}``; required columns ``image_path``, ``labels`` (length-K float
            vectors), ``view``, ``patient_id``; optional ``is_frontal``, ``study_id``, ``report``,
            ``findings``, ``impression`` or ``report_path`` (read and sectioned here), the mask /
            survival columns and ``extra_features`` columns.
        collection: name used in messages (``"chexpert"``).
        label_names: the K names of ``labels`` (stored in the ``positive_labels`` ClassLabel).
        streaming: lazy, sharded ``IterableDataset`` splits; rows are checked while iterating.
        strict: raise on the first bad row instead of skipping and counting it.
        verify_images: also decode each image while checking (slow; catches corrupt files early).
        num_shards: shards per streaming split (``split_dataset_by_node`` splits by shard when the
            world size divides it, else by example).
        cache_dir: `datasets` cache folder for the map-style Arrow files.
        row_hook: ``(example, table_row) -> example`` applied last to each row (e.g. RLE -> mask
            images); it sees the table row's other columns.
        skipped: record to append skipped rows to (a new one by default).
        labels_only: label statistics without images: no ``image``, ``boxes``, ``box_labels`` or
            ``masks`` columns, no file is checked or read (report files named by ``report_path``
            are not read either, so ``report`` stays "" for them), nothing is skipped.
    Returns:
        the dict of splits, with a ``skipped`` attribute (:class:`SkippedRows`).
    Raises:
        ValueError when the tables have rows but every one was skipped (map-style only: streaming
        checks rows while iterating), naming the most common reason and an example file.
    """
    register_cxr_image_plugins()
    skipped = skipped if skipped is not None else SkippedRows(collection)
    skipped_before = skipped.count  # rows a loader already rejected while reading its metadata
    if labels_only:
        with_masks = False  # boxes and masks describe pixels; labels-only mode has none
        if "report_path" in next(iter(tables.values()), pd.DataFrame()).columns:
            logger.info("%s: labels_only=True: report files are not read.", collection)
        tables = {split: table.drop(columns=["report_path"], errors="ignore") for split, table in tables.items()}
    features = cxr_features(
        label_names, with_report=True, with_masks=with_masks, with_survival=with_survival, extra=extra_features,
        with_image=not labels_only,
    )
    columns = tuple(features)  # a tuple: `datasets` shards list-valued gen_kwargs
    splits = {}
    for split, table in tables.items():
        table = table.reset_index(drop=True)
        _check_label_width(table, len(label_names), collection, split)
        if streaming:
            bounds = np.linspace(0, len(table), max(1, min(num_shards, len(table))) + 1).astype(int)
            splits[split] = IterableDataset.from_generator(
                _generate_examples_lazily,
                features=features,
                gen_kwargs={
                    "ranges": [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])],
                    "table": _to_arrow(table, collection), "split": split, "columns": columns,
                    "row_hook": row_hook, "verify_images": verify_images, "skipped": skipped, "strict": strict,
                    "labels_only": labels_only,
                },
            )
        else:
            checked = table if labels_only else _checked_table(table, split, verify_images, skipped, strict)
            if checked.empty:  # `datasets` cannot build a split from a generator that yields nothing
                splits[split] = Dataset.from_dict({column: [] for column in columns}, features=features, split=split)
                continue
            splits[split] = Dataset.from_generator(
                _generate_examples,
                features=features,
                gen_kwargs={"table": _to_arrow(checked, collection), "columns": columns, "row_hook": row_hook},
                cache_dir=cache_dir,
                split=split,
            )
            logger.info("%s [%s]: %d rows", collection, split, len(splits[split]))
    result = IterableDatasetDict(splits) if streaming else DatasetDict(splits)
    if skipped.count and not streaming:
        logger.warning("%s: %d row(s) skipped: %s", collection, skipped.count, skipped.by_reason())
        if not any(len(split) for split in splits.values()):
            raise_all_skipped(skipped, skipped_before + sum(len(table) for table in tables.values()))
    result.skipped = skipped
    return result


def raise_all_skipped(skipped: SkippedRows, n_rows: int) -> None:
    """ValueError for a load in which every one of ``n_rows`` rows was skipped, naming the main reason."""
    reasons = skipped.by_reason()
    reason, count = max(reasons.items(), key=lambda item: item[1])
    example = next(path for _, path, full in skipped.entries if full.split(":")[0] == reason)
    others = {key: value for key, value in reasons.items() if key != reason}
    raise ValueError(
        f"load_{skipped.collection}: all {n_rows} rows were skipped; most common reason: {reason} "
        f"({count} rows, e.g. {example!r})" + (f"; other reasons: {others}" if others else "") + ". "
        "Check the root/image folder; pass labels_only=True for label statistics without images."
    )


def _check_label_width(table: pd.DataFrame, width: int, collection: str, split: str) -> None:
    if len(table) and any(len(labels) != width for labels in table["labels"].head(1000)):
        raise ValueError(f"load_{collection} [{split}]: label vectors do not have {width} entries (internal error).")


def label_matrix_rows(matrix: np.ndarray) -> list[np.ndarray]:
    """(N, K) float32 matrix -> one vector per row, for a table's ``labels`` column."""
    return list(np.asarray(matrix, dtype=np.float32))


def read_text_lenient(path: Path) -> str:
    """Text of a small metadata file, tolerating Latin-1 bytes (the NLM clinical readings)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically (``img2`` before ``img10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def png_bytes(mask: np.ndarray) -> dict:
    """Binary (H, W) mask -> ``Image()`` value (PNG bytes, mode ``L``, 0/255)."""
    buffer = io.BytesIO()
    PILImage.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}

"""The loader registry: pick a collection by name, with one options object for every loader.

``LOADERS[name](options)`` calls ``load_<name>`` with the fields of :class:`LoaderOptions` that the
loader takes, plus the collection-specific arguments in ``options.kwargs`` (e.g. ``{"labels": "5"}``
for CheXpert). :func:`load_dataset_by_name` is what recipes call with their ``--dataset`` value: a
registered name (``-`` and ``_`` are interchangeable: ``mimic-cxr`` = ``mimic_cxr``) or the path of
a CSV file (:func:`~.custom_csv.load_csv`, with ``options.root`` as its image folder).

Options a loader has no parameter for are applied uniformly: ``splits`` selects splits from the
result (unknown names are an error), ``frontal_only`` filters on ``is_frontal``. ``strict``,
``verify_images`` and ``cache_dir`` concern files and are not passed to the phantom set, which has none.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict, IterableDatasetDict, load_from_disk

from ._common import ensure_cxr_schema
from .chexpert import load_chexpert
from .covidx import load_covidx
from .custom_csv import load_csv
from .cxr_lt import load_cxr_lt
from .jsrt import load_jsrt
from .mimic_cxr import load_mimic_cxr
from .nih import load_nih
from .object_cxr import load_object_cxr
from .openi import load_openi
from .padchest import load_padchest
from .phantom import load_phantom
from .plco import load_plco
from .rsna import load_rsna
from .shenzhen import load_montgomery, load_nlm_tb, load_shenzhen
from .siim import load_siim
from .vindr import load_vindr

__all__ = ["LoaderOptions", "Loader", "LOADERS", "load_dataset_by_name", "CSV_SUFFIXES"]

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.zip")
_COMMON = ("streaming", "strict", "labels_only", "verify_images", "frontal_only", "num_shards", "cache_dir")


@dataclass
class LoaderOptions:
    """Options shared by every loader (see ``build_dataset_dict`` for their meaning).

    Attributes:
        root: the collection's folder (for a CSV: the folder relative image paths start from).
        splits: splits to return (default: all the loader makes).
        streaming, strict, labels_only, verify_images, frontal_only, num_shards, cache_dir: as in
            every ``load_<name>``.
        kwargs: collection-specific arguments passed on unchanged, e.g. ``{"labels": "5"}``.
    """

    root: str | os.PathLike | None = None
    splits: Sequence[str] | None = None
    streaming: bool = False
    strict: bool = False
    labels_only: bool = False
    verify_images: bool = False
    frontal_only: bool = False
    num_shards: int = 16
    cache_dir: str | None = None
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Loader:
    """One registered collection: ``loader(options, **kwargs)`` -> ``DatasetDict``."""

    name: str
    function: Callable
    # The function whose parameters are checked (load_shenzhen forwards **kwargs to load_nlm_tb).
    signature_of: Callable | None = None

    @property
    def parameters(self) -> set[str]:
        return set(inspect.signature(self.signature_of or self.function).parameters)

    @property
    def needs_root(self) -> bool:
        return "root" in self.parameters

    def __call__(self, options: LoaderOptions | None = None, **kwargs):
        options = options if options is not None else LoaderOptions()
        arguments = {**options.kwargs, **kwargs}
        accepted = self.parameters - {"root", "collection", "folders"}
        unknown = sorted(set(arguments) - accepted)
        if unknown:
            raise TypeError(f"load_{self.name}: unknown argument(s) {unknown}; it accepts {sorted(accepted)}.")
        for name in _COMMON:
            if name in accepted:
                arguments.setdefault(name, getattr(options, name))
        positional = []
        if self.needs_root:
            if options.root is None:
                raise ValueError(f"load_{self.name}: LoaderOptions.root is required (the collection's folder).")
            positional.append(options.root)
        elif options.root is not None:
            raise ValueError(f"load_{self.name} reads no files; LoaderOptions.root must be None, got {options.root!r}.")
        if options.splits is not None and "splits" in accepted:
            arguments.setdefault("splits", tuple(options.splits))
        result = self.function(*positional, **arguments)
        if options.frontal_only and "frontal_only" not in accepted:
            result = _keep_frontal(result)
        if options.splits is not None and "splits" not in accepted:
            result = _select_splits(result, options.splits, self.name)
        return result


def _keep_frontal(result):
    skipped = getattr(result, "skipped", None)
    filtered = type(result)({
        split: dataset.filter(lambda frontal: frontal, input_columns="is_frontal") for split, dataset in result.items()
    })
    if skipped is not None:
        filtered.skipped = skipped
    return filtered


def _select_splits(result: DatasetDict | IterableDatasetDict, splits: Sequence[str], name: str):
    unknown = [split for split in splits if split not in result]
    if unknown:
        raise ValueError(f"load_{name}: unknown split(s) {unknown}; it has {list(result)}.")
    selected = type(result)({split: result[split] for split in splits})
    if hasattr(result, "skipped"):
        selected.skipped = result.skipped
    return selected


LOADERS: dict[str, Loader] = {
    loader.name: loader
    for loader in (
        Loader("chexpert", load_chexpert),
        Loader("covidx", load_covidx),
        Loader("cxr_lt", load_cxr_lt),
        Loader("jsrt", load_jsrt),
        Loader("mimic_cxr", load_mimic_cxr),
        Loader("montgomery", load_montgomery, signature_of=load_nlm_tb),
        Loader("nih", load_nih),
        Loader("object_cxr", load_object_cxr),
        Loader("openi", load_openi),
        Loader("padchest", load_padchest),
        Loader("phantom", load_phantom),
        Loader("plco", load_plco),
        Loader("rsna", load_rsna),
        Loader("shenzhen", load_shenzhen, signature_of=load_nlm_tb),
        Loader("siim", load_siim),
        Loader("vindr", load_vindr),
    )
}


def _is_csv(value: str | os.PathLike) -> bool:
    return str(value).lower().endswith(CSV_SUFFIXES)


def load_dataset_by_name(
    name_or_csv: str | os.PathLike, options: LoaderOptions | None = None, **kwargs
) -> DatasetDict | IterableDatasetDict:
    """Load a registered collection by name, or a CSV of your own by its path.

    Args:
        name_or_csv: a key of :data:`LOADERS` (``-``/``_`` and case do not matter), a path ending
            in ``.csv`` / ``.csv.gz`` / ``.csv.zip``, or a ``DatasetDict.save_to_disk`` folder (its
            missing schema columns are added by :func:`ensure_cxr_schema`; ``label_names`` may be
            passed as a keyword; of the options only ``splits`` applies).
        options: :class:`LoaderOptions` (default: all defaults).
        kwargs: collection-specific arguments (merged over ``options.kwargs``).
    Raises:
        ValueError for an unknown name (listing the registered ones), TypeError for an argument
        the loader does not take, FileNotFoundError for a missing CSV or collection folder.
    """
    options = options if options is not None else LoaderOptions()
    if isinstance(name_or_csv, (str, os.PathLike)) and (Path(name_or_csv) / "dataset_dict.json").is_file():
        return _load_saved(Path(name_or_csv), options, kwargs)
    if isinstance(name_or_csv, Path) or _is_csv(name_or_csv):
        return _load_csv_with_options(Path(name_or_csv), options, kwargs)
    if not isinstance(name_or_csv, str):
        raise TypeError(f"load_dataset_by_name: expected a collection name or CSV path, got {type(name_or_csv).__name__}.")
    key = name_or_csv.strip().lower().replace("-", "_")
    if key not in LOADERS:
        raise ValueError(f"Unknown dataset {name_or_csv!r}: not a registered collection ({sorted(LOADERS)}) "
                         f"and not a path ending in {' / '.join(CSV_SUFFIXES)}.")
    return LOADERS[key](options, **kwargs)


def _load_csv_with_options(path: Path, options: LoaderOptions, kwargs: Mapping):
    if not path.is_file():
        raise FileNotFoundError(f"load_csv: CSV file {str(path)!r} not found.")
    arguments = {**options.kwargs, **kwargs}
    if options.root is not None:
        arguments.setdefault("image_root", options.root)
    as_collection = LoaderOptions(**{**options.__dict__, "root": None, "kwargs": {}})
    return Loader("csv", lambda **named: load_csv(path, **named), signature_of=load_csv)(as_collection, **arguments)


def _load_saved(folder: Path, options: LoaderOptions, kwargs: Mapping):
    arguments = {**options.kwargs, **kwargs}
    unknown = sorted(set(arguments) - {"label_names"})
    if unknown:
        raise TypeError(f"load_dataset_by_name({str(folder)!r}): a saved DatasetDict takes only label_names, "
                        f"got {unknown}.")
    data = ensure_cxr_schema(load_from_disk(str(folder)), label_names=arguments.get("label_names"))
    return _select_splits(data, options.splits, str(folder)) if options.splits is not None else data

"""Shared by `embed`, `predict` and `zero-shot`: which files to read, a DataLoader that preprocesses them in
workers and skips unreadable ones with the reason, the skipped-files report, and a model folder argument."""

from __future__ import annotations

import argparse
import csv
import glob
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Files a folder contributes. DICOMs often come without an extension, so extension-less files are read too.
IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "Path")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+",
                        help="image files, folders (searched recursively), glob patterns ('scans/*.dcm') or CSV files "
                        "with a path column; DICOM, 8/16-bit PNG and JPEG")
    parser.add_argument("--path-column", default=None,
                        help=f"CSV column holding the file paths (default: the first of {', '.join(PATH_COLUMNS)})")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes decoding images")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file (exit 2)")
    parser.add_argument("--skipped-report", type=Path, default=None,
                        help="CSV of skipped files and reasons (default: OUTPUT + '.skipped.csv' when any is skipped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _paths_from_csv(csv_path: Path, column: str | None) -> list[Path]:
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        chosen = column or next((name for name in PATH_COLUMNS if name in header), None)
        if chosen is None or chosen not in header:
            wanted = repr(column) if column else f"one of {list(PATH_COLUMNS)}"
            raise ValueError(f"{csv_path}: no path column {wanted}; its columns are {header}. Use --path-column.")
        rows = [row[chosen] for row in reader]
    empty = [index + 2 for index, value in enumerate(rows) if not (value or "").strip()]
    if empty:
        raise ValueError(f"{csv_path}: empty {chosen!r} on line(s) {empty[:10]}.")
    # Relative paths in a CSV are relative to the CSV's folder, as in the public datasets' label files.
    return [Path(value) if Path(value).is_absolute() else csv_path.parent / value for value in rows]


def collect_inputs(inputs: list[str], path_column: str | None = None) -> list[Path]:
    """Expand folders, globs and CSVs into a list of files, in a stable order, without duplicates.

    An argument that matches nothing raises FileNotFoundError naming it; files listed in a CSV that do not exist
    are kept, so that they are reported as skipped with the reason.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if any(char in item for char in "*?[") and not path.exists():
            matches = sorted(Path(match) for match in glob.glob(item, recursive=True) if Path(match).is_file())
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no file.")
            found += matches
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == ""))
            if not files:
                raise FileNotFoundError(f"{path}: the folder holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))} "
                                        "or extension-less DICOM).")
            found += files
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += _paths_from_csv(path, path_column)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{item}: no such file, folder or pattern.")
    unique = list(dict.fromkeys(found))
    return unique


def split_normalization(processor):
    """(processor for the workers, `finish(batch)` for the main process) such that `finish` of the workers' output
    equals the processor's output bit for bit.

    A CXRImageProcessor normalises one grey plane into `num_channels` channels; done in the workers, that sends
    three times the bytes through the DataLoader's shared memory. The workers stop at the min-max-rescaled grey
    plane and `finish` applies the same `(x - mean) / std` to the whole batch. Other processors are left whole.
    """
    from cxrfm.processing import CXRImageProcessor

    if not isinstance(processor, CXRImageProcessor) or not processor.do_normalize:
        return processor, lambda batch: batch
    import numpy as np

    channels = processor.num_channels
    mean = torch.from_numpy(np.broadcast_to(np.float32(processor.image_mean), (channels,)).copy())[:, None, None]
    std = torch.from_numpy(np.broadcast_to(np.float32(processor.image_std), (channels,)).copy())[:, None, None]
    worker_processor = CXRImageProcessor(**{**processor.to_dict(), "do_normalize": False, "num_channels": 1})

    def finish(batch: torch.Tensor) -> torch.Tensor:
        out = torch.empty((batch.shape[0], channels, *batch.shape[-2:]), dtype=torch.float32)
        return torch.sub(batch.expand(-1, channels, -1, -1), mean, out=out).div_(std)

    return worker_processor, finish


class ImageFiles(torch.utils.data.Dataset):
    """Item `i`: `(i, pixel_values (C, H, W) or None, reason or None)`; a failure never raises in a worker."""

    def __init__(self, paths: list[Path], processor):
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            pixel_values = self.processor(str(path), return_tensors="pt")["pixel_values"][0]
        except (ValueError, TypeError, OSError, ImportError) as error:
            return index, None, _reason(error, path)
        return index, pixel_values, None


def _reason(error: Exception, path: Path) -> str:
    # The processor's messages start with how it names the input ("images ('x.png'): ..."); keep the reason only.
    text = str(error)
    prefix = f"images ({str(path)!r}): "
    return f"{type(error).__name__}: {text[len(prefix):] if text.startswith(prefix) else text}"


def _collate(items):
    good = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    failed = [(index, reason) for index, pixels, reason in items if pixels is None]
    indices = [index for index, _ in good]
    batch = torch.stack([pixels for _, pixels in good]) if good else None
    return indices, batch, failed


@dataclass
class Skipped:
    """Files left out of a run and why."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "reason"])
            writer.writerows(self.rows)


def run_batches(paths, processor, args, description, step):
    """Call `step(indices, pixel_values)` on every readable batch; return the Skipped record."""
    skipped = Skipped()
    worker_processor, finish = split_normalization(processor)
    loader = torch.utils.data.DataLoader(ImageFiles(paths, worker_processor), batch_size=args.batch_size,
                                         num_workers=args.num_workers, collate_fn=_collate)
    from tqdm.auto import tqdm

    with torch.inference_mode(), tqdm(total=len(paths), desc=description, unit="img", file=sys.stderr,
                                      disable=args.no_progress) as bar:
        for indices, batch, failed in loader:
            for index, reason in failed:
                if args.strict:
                    raise ValueError(f"{paths[index]}: {reason} (--strict)")
                skipped.rows.append((str(paths[index]), reason))
            if batch is not None:
                step(indices, finish(batch))
            bar.update(len(indices) + len(failed))
    return skipped


def report_skipped(skipped: Skipped, output: Path, args: argparse.Namespace, total: int) -> None:
    """Write the skipped-files CSV (if any was skipped) and say on stderr how many and where."""
    if not skipped.rows:
        return
    report = args.skipped_report or output.with_name(output.name + ".skipped.csv")
    skipped.write(report)
    reasons = {}
    for _, reason in skipped.rows:
        reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
    logger.warning("Skipped %d of %d files (%s); list with reasons: %s", len(skipped.rows), total,
                   ", ".join(f"{count} {kind}" for kind, count in reasons.items()), report)


def require_some(readable: int, skipped: Skipped, total: int) -> None:
    if readable == 0:
        first = skipped.rows[0] if skipped.rows else ("", "")
        raise ValueError(f"none of the {total} files could be read; first: {first[0]}: {first[1]}")

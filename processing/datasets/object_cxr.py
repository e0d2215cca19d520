"""Object-CXR (JF Healthcare, MIDL 2020 challenge): foreign objects on frontal chest X-rays, boxes and shapes.

Layout as distributed (github.com/jfhealthcare/object-CXR)::

    <root>/train.csv   <root>/dev.csv        image_name,annotation   (the README's example calls the
    <root>/train/#####.jpg                    first column image_path; both names are accepted)
    <root>/dev/#####.jpg

``annotation`` lists the foreign objects of an image, separated by ``;``; each object is
``TYPE x1 y1 x2 y2 ...`` in pixels (origin top-left, x to the right, y down) with TYPE 0 =
rectangle and 1 = ellipse (both given by the upper-left and lower-right corners of their bounding
box) and 2 = polygon (``x1 y1 ... xn yn``). An empty annotation means no foreign object. The
label ``"Foreign Object"`` is 1 when the image has an object (4,000 + 4,000 train and 500 + 500
dev images with / without objects). The test labels were never released.

Boxes follow the RSNA/VinDr convention of :func:`cxr_features` (``boxes`` = x_min, y_min, x_max,
y_max in pixels; a polygon's box is the extent of its points; ``box_labels`` = 0); with
``with_masks=True`` each object is also drawn as a binary mask (PNG 0/255, image size, one per box
in the same order, as SIIM's masks): the rectangle, the ellipse inscribed in its box, or the
filled polygon. ``object_shapes`` names each object's shape.

Splits: ``train.csv`` -> ``train`` and ``dev.csv`` -> ``validation``. With ``validation_fraction``
> 0 that share of the training images becomes ``validation`` and ``dev.csv`` becomes ``test``
(there are no patient ids, so each image counts as its own patient).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import List, Value
from PIL import Image as PILImage
from PIL import ImageDraw

from ._io import (
    SkippedRows,
    _RowError,
    _skip_or_raise,
    build_dataset_dict,
    png_bytes,
    read_table,
    require_file,
    require_root,
    split_by_patient,
)

__all__ = ["load_object_cxr", "parse_object_cxr_annotation", "OBJECT_CXR_LABELS", "OBJECT_SHAPES"]

OBJECT_CXR_LABELS: tuple[str, ...] = ("Foreign Object",)
OBJECT_SHAPES: dict[int, str] = {0: "rectangle", 1: "ellipse", 2: "polygon"}
_IMAGE_COLUMNS = ("image_name", "image_path")
_SPLIT_FILES = {"train": ("train.csv", "train"), "dev": ("dev.csv", "dev")}
_LAYOUT = "train.csv / dev.csv (image_name,annotation) and the train/ and dev/ JPEG folders."


def parse_object_cxr_annotation(annotation: object) -> list[tuple[str, list[float]]]:
    """An Object-CXR annotation cell -> ``[(shape, coordinates), ...]`` (empty for no object).

    Raises ValueError naming the object and the reason: unknown type, a rectangle/ellipse
    without exactly 4 coordinates or with x1 >= x2 / y1 >= y2, a polygon with an odd number of
    coordinates or fewer than 3 points, or a non-numeric value.
    """
    if annotation is None or (isinstance(annotation, float) and np.isnan(annotation)):
        return []
    objects = []
    for number, text in enumerate(part.strip() for part in str(annotation).split(";")):
        if not text:
            continue
        fields = text.split()
        try:
            kind = int(fields[0])
            coordinates = [float(value) for value in fields[1:]]
        except ValueError as error:
            raise ValueError(f"object {number} {text[:40]!r}: not a list of numbers ({error})") from error
        if kind not in OBJECT_SHAPES:
            raise ValueError(f"object {number} {text[:40]!r}: type {kind} is not 0 (rectangle), 1 (ellipse) "
                             "or 2 (polygon)")
        if kind in (0, 1):
            if len(coordinates) != 4:
                raise ValueError(f"object {number} {text[:40]!r}: a {OBJECT_SHAPES[kind]} needs 'x1 y1 x2 y2', "
                                 f"got {len(coordinates)} values")
            x1, y1, x2, y2 = coordinates
            if not (x1 < x2 and y1 < y2):
                raise ValueError(f"object {number} {text[:40]!r}: needs x1 < x2 and y1 < y2")
        elif len(coordinates) % 2 or len(coordinates) < 6:
            raise ValueError(f"object {number} {text[:40]!r}: a polygon needs 3 or more 'x y' points, "
                             f"got {len(coordinates)} values")
        objects.append((OBJECT_SHAPES[kind], coordinates))
    return objects


def _box(shape: str, coordinates: Sequence[float]) -> list[float]:
    if shape == "polygon":
        xs, ys = coordinates[0::2], coordinates[1::2]
        return [min(xs), min(ys), max(xs), max(ys)]
    return list(coordinates)


def load_object_cxr(
    root,
    *,
    with_masks: bool = False,
    validation_fraction: float = 0.0,
    seed: int = 0,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load Object-CXR into ``train`` / ``validation`` (/ ``test``, see the module docstring).

    Args:
        root: the folder holding ``train.csv``, ``dev.csv``, ``train/`` and ``dev/``.
        with_masks: add one binary mask per object (``masks``); ``boxes`` are always read.
        validation_fraction: share of ``train.csv`` images held out as ``validation``; then
            ``dev.csv`` is the ``test`` split.
        seed: seed of that hold-out.
        frontal_only: accepted for a uniform signature (every Object-CXR image is frontal).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    Returns:
        ``DatasetDict`` with the common features plus ``boxes``, ``box_labels``, ``masks`` (empty
        without ``with_masks``) and ``object_shapes``; rows with a malformed annotation are skipped
        and counted (reason ``invalid annotation``) like rows whose image is missing.
    """
    root = require_root(root, "object_cxr", _LAYOUT)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"load_object_cxr: validation_fraction must be in [0, 1), got {validation_fraction}.")
    skipped = SkippedRows("object_cxr")
    train = _read_split(root, "train", skipped, strict)
    dev = _read_split(root, "dev", skipped, strict)
    if validation_fraction > 0:
        tables = split_by_patient(train, (1 - validation_fraction, validation_fraction), seed, ("train", "validation"))
        tables["test"] = dev
    else:
        tables = {"train": train, "validation": dev}
    return build_dataset_dict(
        tables, collection="object_cxr", label_names=OBJECT_CXR_LABELS, streaming=streaming, strict=strict,
        labels_only=labels_only, verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        with_masks=True, extra_features={"object_shapes": List(Value("string"))},
        row_hook=_MaskHook() if with_masks and not labels_only else None, skipped=skipped,
    )


def _read_split(root: Path, name: str, skipped: SkippedRows, strict: bool) -> pd.DataFrame:
    csv_name, folder = _SPLIT_FILES[name]
    csv_path = require_file(root / csv_name, "object_cxr", f"{name} annotation CSV")
    frame = read_table(csv_path, "object_cxr", ["annotation"], what="Object-CXR annotation CSV",
                       dtype=str, keep_default_na=False)
    image_column = next((column for column in _IMAGE_COLUMNS if column in frame.columns), None)
    if image_column is None:
        raise ValueError(f"load_object_cxr: {str(csv_path)!r} has no image column ({' or '.join(_IMAGE_COLUMNS)}); "
                         f"found {list(frame.columns)}.")
    rows = []
    for index, (image, annotation) in enumerate(zip(frame[image_column], frame["annotation"])):
        image_path = str(root / folder / Path(image.strip()).name)
        try:
            objects = parse_object_cxr_annotation(annotation)
        except ValueError as error:
            _skip_or_raise(_RowError(f"{csv_path}:{index + 2}", f"invalid annotation: {error}"), name, skipped, strict)
            continue
        rows.append({
            "image_path": image_path,
            "labels": np.array([1.0 if objects else 0.0], dtype=np.float32),
            "view": "",
            "is_frontal": True,
            "patient_id": Path(image_path).stem,
            "study_id": Path(image_path).stem,
            "boxes": [_box(shape, coordinates) for shape, coordinates in objects],
            "box_labels": [0] * len(objects),
            "masks": [],
            "object_shapes": [shape for shape, _ in objects],
            "object_coordinates": [coordinates for _, coordinates in objects],
        })
    return pd.DataFrame(rows, columns=["image_path", "labels", "view", "is_frontal", "patient_id", "study_id", "boxes",
                                       "box_labels", "masks", "object_shapes", "object_coordinates"])


class _MaskHook:
    """Row hook: each object drawn as a filled binary mask of the image's size."""

    def __call__(self, example: dict, record: dict) -> dict:
        with PILImage.open(record["image_path"]) as image:  # reads the header only
            size = image.size
        masks = []
        for shape, coordinates in zip(record["object_shapes"], record["object_coordinates"]):
            canvas = PILImage.new("L", size, 0)
            draw = ImageDraw.Draw(canvas)
            if shape == "rectangle":
                draw.rectangle(coordinates, fill=1)
            elif shape == "ellipse":
                draw.ellipse(coordinates, fill=1)
            else:
                draw.polygon(list(coordinates), fill=1)
            masks.append(png_bytes(np.asarray(canvas)))
        example["masks"] = masks
        return example

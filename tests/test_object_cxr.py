"""Object-CXR loader (processing/datasets/object_cxr.py) on a copy of the official layout written by the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

from cxrfm.processing.datasets import (
    LOADERS,
    LoaderOptions,
    cxr_features,
    get_label_names,
    load_dataset_by_name,
    load_object_cxr,
    parse_object_cxr_annotation,
)

W, H = 16, 12  # not square, so a swapped x/y would show


def _jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.full((H, W), 90, np.uint8)).save(path, format="JPEG")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "object-CXR"
    train = {
        "00001.jpg": "0 2 3 6 8",
        "00002.jpg": "1 1 1 9 7;2 10 2 14 2 12 6",
        "00003.jpg": "",
        "00004.jpg": "3 1 1 2 2",  # unknown shape type: skipped and counted
    }
    for name in train:
        _jpeg(root / "train" / name)
    pd.DataFrame({"image_name": list(train), "annotation": list(train.values())}).to_csv(root / "train.csv", index=False)
    # dev.csv in the README's spelling: an image_path column holding a path whose file name is used.
    _jpeg(root / "dev" / "00005.jpg")
    _jpeg(root / "dev" / "00006.jpg")
    pd.DataFrame({"image_path": ["/path/00005.jpg", "/path/00006.jpg"],
                  "annotation": ["0 0 0 4 4", ""]}).to_csv(root / "dev.csv", index=False)
    return root


def test_labels_boxes_shapes_and_masks(root, tmp_path):
    dd = load_object_cxr(root, with_masks=True, cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["train", "validation"] and get_label_names(dd) == ["Foreign Object"]
    assert dd.skipped.by_reason() == {"invalid annotation": 1} and dd.skipped.paths()[0].endswith("train.csv:5")
    # Same box/mask columns as the RSNA, VinDr and SIIM loaders.
    reference = cxr_features(["Foreign Object"], with_masks=True)
    assert all(dd["train"].features[name] == reference[name] for name in ("boxes", "box_labels", "masks"))
    rows = {row["image_path"].rsplit("/", 1)[1]: row for split in dd.values() for row in split}
    assert set(rows) == {"00001.jpg", "00002.jpg", "00003.jpg", "00005.jpg", "00006.jpg"}
    assert [rows[name]["labels"] for name in sorted(rows)] == [[1.0], [1.0], [0.0], [1.0], [0.0]]
    assert rows["00001.jpg"]["boxes"] == [[2, 3, 6, 8]] and rows["00001.jpg"]["object_shapes"] == ["rectangle"]
    assert rows["00002.jpg"]["boxes"] == [[1, 1, 9, 7], [10, 2, 14, 6]]
    assert rows["00002.jpg"]["object_shapes"] == ["ellipse", "polygon"] and rows["00002.jpg"]["box_labels"] == [0, 0]
    assert rows["00003.jpg"]["boxes"] == [] and rows["00003.jpg"]["masks"] == []

    rectangle = np.asarray(rows["00001.jpg"]["masks"][0]) > 0
    assert rectangle.shape == (H, W)
    expected = np.zeros((H, W), bool)
    expected[3:9, 2:7] = True  # rows y1..y2, columns x1..x2, both corners inside
    np.testing.assert_array_equal(rectangle, expected)
    ellipse, polygon = (np.asarray(mask) > 0 for mask in rows["00002.jpg"]["masks"])
    assert ellipse[4, 5] and not ellipse[1, 1] and not ellipse[:, 10:].any()  # centre in, box corner out
    assert polygon[5, 12] and not polygon[6, 10] and not polygon[:, :10].any()  # inside the triangle only
    ys, xs = np.nonzero(polygon)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (10, 2, 14, 6)


def test_registry_labels_only_hold_out_and_strict(root, tmp_path):
    assert LOADERS["object_cxr"].function is load_object_cxr
    stats = load_dataset_by_name("object-CXR", LoaderOptions(root=root, labels_only=True, cache_dir=str(tmp_path / "c")))
    assert "image" not in stats["train"].column_names and "masks" not in stats["train"].column_names
    assert sum(stats["train"]["labels"], []) == [1.0, 1.0, 0.0]
    held = load_object_cxr(root, validation_fraction=0.34, cache_dir=str(tmp_path / "c"))
    assert list(held) == ["train", "validation", "test"] and held["test"].num_rows == 2
    assert held["train"].num_rows + held["validation"].num_rows == 3 and held["validation"].num_rows >= 1
    with pytest.raises(ValueError, match=r"train\.csv:5: invalid annotation: object 0 '3 1 1 2 2': type 3"):
        load_object_cxr(root, strict=True, cache_dir=str(tmp_path / "c"))


def test_annotation_parser_errors():
    assert parse_object_cxr_annotation("") == [] and parse_object_cxr_annotation(float("nan")) == []
    assert parse_object_cxr_annotation("2 0 0 4 0 2 3;") == [("polygon", [0.0, 0.0, 4.0, 0.0, 2.0, 3.0])]
    for bad, reason in [("0 1 2 3", "needs 'x1 y1 x2 y2'"), ("1 5 5 2 9", "x1 < x2"),
                        ("2 0 0 4 0", "3 or more"), ("0 a b c d", "not a list of numbers")]:
        with pytest.raises(ValueError, match=reason):
            parse_object_cxr_annotation(bad)

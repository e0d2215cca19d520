"""LOADERS / LoaderOptions / load_dataset_by_name (processing/datasets/registry.py), labels-only mode on every
registered loader, and the error raised when a load skips every row."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd
import pytest
from test_loaders_helpers import (
    make_chexpert,
    make_covidx,
    make_cxr_lt,
    make_jsrt,
    make_mimic,
    make_montgomery,
    make_nih,
    make_openi,
    make_padchest,
    make_plco,
    make_rsna,
    make_shenzhen,
    make_siim,
    make_vindr,
    write_jpeg,
)

from cxrfm.processing.datasets import LOADERS, LoaderOptions, get_label_names, load_chexpert, load_dataset_by_name
from cxrfm.processing.labels import CHEXPERT_5, CXR_LT_40, VINDR_28

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".img"}


def _make_object_cxr(tmp_path):
    root = tmp_path / "object-CXR"
    for split, names in (("train", ["1.jpg", "2.jpg"]), ("dev", ["3.jpg"])):
        for name in names:
            write_jpeg(root / split / name)
        pd.DataFrame({"image_name": names, "annotation": ["0 1 1 3 3"] + [""] * (len(names) - 1)}).to_csv(
            root / f"{split}.csv", index=False)
    return root


def _make_cxr_lt(tmp_path):
    mimic_root, _ = make_mimic(tmp_path, with_reports=False)
    return make_cxr_lt(tmp_path, mimic_root, CXR_LT_40), {"image_root": mimic_root}


# name -> (writes the collection's layout and returns (root, loader kwargs), images listed in metadata)
CASES = {
    "chexpert": (lambda p: (make_chexpert(p), {}), True),
    "covidx": (lambda p: (make_covidx(p), {}), True),
    "cxr_lt": (_make_cxr_lt, True),
    "jsrt": (lambda p: (make_jsrt(p), {}), False),  # labels come from the image file names
    "mimic_cxr": (lambda p: (make_mimic(p, with_reports=False)[0], {}), True),
    "montgomery": (lambda p: (make_montgomery(p), {}), False),
    "nih": (lambda p: (make_nih(p), {}), True),
    "object_cxr": (lambda p: (_make_object_cxr(p), {}), True),
    "openi": (lambda p: (make_openi(p), {}), True),
    "padchest": (lambda p: (make_padchest(p), {}), True),
    "plco": (lambda p: (make_plco(p), {}), True),
    "rsna": (lambda p: (make_rsna(p), {}), True),
    "shenzhen": (lambda p: (make_shenzhen(p), {}), False),
    "siim": (lambda p: (make_siim(p), {}), True),
    "vindr": (lambda p: (make_vindr(p, VINDR_28), {}), True),
}


def test_registry_covers_every_loader_with_one_options_object():
    assert sorted(LOADERS) == sorted([*CASES, "phantom"])
    for name, loader in LOADERS.items():
        parameters = inspect.signature(loader.signature_of or loader.function).parameters
        assert {"streaming", "labels_only"} <= set(parameters), name
        assert loader.needs_root == (name != "phantom")


def _same_labels(a, b):
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(CASES))
def test_labels_only_and_all_skipped_on_every_loader(name, tmp_path):
    make, listed = CASES[name]
    root, kwargs = make(tmp_path)
    options = LoaderOptions(root=root, cache_dir=str(tmp_path / "cache"), kwargs=kwargs)
    full = LOADERS[name](options)
    stats = LOADERS[name](LoaderOptions(**{**options.__dict__, "labels_only": True}))
    assert get_label_names(stats) == get_label_names(full)
    assert all("image" not in split.column_names and "masks" not in split.column_names for split in stats.values())
    assert stats.skipped.count == 0  # no file is checked, so nothing is skipped for a missing image
    by_path = {row["image_path"]: row["labels"] for split in stats.values() for row in split}
    loaded = [row for split in full.values() for row in split]
    assert loaded and all(_same_labels(by_path[row["image_path"]], row["labels"]) for row in loaded)
    assert len(by_path) == len(loaded) + full.skipped.count
    if not listed:
        return
    for path in tmp_path.rglob("*"):  # cxr_lt keeps its images in the MIMIC-CXR-JPG folder
        if path.suffix.lower() in IMAGE_SUFFIXES:
            path.unlink()
    with pytest.raises(ValueError, match=rf"load_{name}: all {len(by_path)} rows were skipped; "
                                         r"most common reason: missing image"):
        LOADERS[name](options)
    again = LOADERS[name](LoaderOptions(**{**options.__dict__, "labels_only": True}))
    assert sum(split.num_rows for split in again.values()) == len(by_path)


def test_options_reach_the_loader_and_errors_name_the_problem(tmp_path):
    root = make_chexpert(tmp_path)
    options = LoaderOptions(root=root, splits=["validation"], cache_dir=str(tmp_path / "cache"), kwargs={"labels": "5"})
    dd = load_dataset_by_name("CheXpert", options)
    direct = load_chexpert(root, labels="5", splits=("validation",), cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["validation"] and get_label_names(dd) == list(CHEXPERT_5)
    np.testing.assert_array_equal(np.array(dd["validation"]["labels"][:]), np.array(direct["validation"]["labels"][:]))
    with pytest.raises(ValueError, match=r"Unknown dataset 'mimic'.*'mimic_cxr'.*\.csv"):
        load_dataset_by_name("mimic", options)
    with pytest.raises(TypeError, match=r"load_chexpert: unknown argument\(s\) \['label'\]"):
        load_dataset_by_name("chexpert", options, label="5")
    with pytest.raises(ValueError, match=r"load_nih: LoaderOptions.root is required"):
        load_dataset_by_name("nih", LoaderOptions())
    with pytest.raises(ValueError, match=r"load_phantom reads no files"):
        load_dataset_by_name("phantom", LoaderOptions(root=root))


def test_phantom_through_the_registry_selects_splits_and_frontal_images():
    options = LoaderOptions(splits=["test", "train"], frontal_only=True, labels_only=True,
                            kwargs={"num_images": 40, "lateral_fraction": 0.5})
    dd = load_dataset_by_name("phantom", options)
    everything = LOADERS["phantom"](LoaderOptions(labels_only=True, kwargs={"num_images": 40, "lateral_fraction": 0.5}))
    assert list(dd) == ["test", "train"] and "image" not in dd["train"].column_names
    for split in ("test", "train"):
        assert all(dd[split]["is_frontal"])
        assert dd[split].num_rows == int(np.sum(everything[split]["is_frontal"])) > 0
    assert any(not frontal for frontal in everything["train"]["is_frontal"])  # the filter removed something
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['dev'\]"):
        load_dataset_by_name("phantom", LoaderOptions(splits=["dev"], labels_only=True, kwargs={"num_images": 8}))

"""Your own data: load_csv (processing/datasets/custom_csv.py), load_dataset_by_name with a CSV, ensure_cxr_schema."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, DatasetDict, Image, List, Value
from PIL import Image as PILImage
from test_loaders_helpers import write_png

from cxrfm.processing.datasets import (
    LoaderOptions,
    ensure_cxr_schema,
    get_label_names,
    load_csv,
    load_dataset_by_name,
    patient_level_split,
)

REPORT = "FINDINGS: The heart is enlarged.\n\nIMPRESSION: Cardiomegaly."


def _write(tmp_path, rows, name="labels.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _good_rows(tmp_path, n_patients=12):
    rows = []
    for patient in range(n_patients):
        for image in range(2):
            relative = f"img/p{patient}_{image}.png"
            write_png(tmp_path / relative, size=4, value=10 * patient + image)
            rows.append({"path": relative, "pid": f"P{patient}", "Edema": str(patient % 2), "Mass": "",
                         "text": REPORT if image == 0 else ""})
    return rows


def _nan_equal(a, b):
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))


def test_labels_reports_patient_split_and_bad_rows(tmp_path):
    rows = _good_rows(tmp_path)
    rows[0]["Mass"] = "-1"
    rows[1]["Mass"] = "1"
    rows += [
        {"path": "img/not_there.png", "pid": "P99", "Edema": "1", "Mass": "0", "text": ""},  # missing file
        {"path": "", "pid": "P98", "Edema": "1", "Mass": "0", "text": ""},  # empty image cell
        {"path": "img/p0_0.png", "pid": "P97", "Edema": "maybe", "Mass": "0", "text": ""},  # not a number
        {"path": "img/p0_0.png", "pid": "P96", "Edema": "2", "Mass": "0", "text": ""},  # not 1/0/-1
        {"path": "img/p0_0.png", "pid": "", "Edema": "1", "Mass": "0", "text": ""},  # no patient
    ]
    csv = _write(tmp_path, rows)
    dd = load_csv(csv, image_column="path", label_columns=["Edema", "Mass"], report_column="text",
                  patient_column="pid", fractions=(0.5, 0.25, 0.25), cache_dir=str(tmp_path / "cache"))
    assert get_label_names(dd) == ["Edema", "Mass"]
    assert sum(split.num_rows for split in dd.values()) == 24
    assert dd.skipped.by_reason() == {"missing image": 2, "invalid label": 2, "missing patient id": 1}
    assert any(path.endswith("labels.csv:28") for path in dd.skipped.paths())  # the "maybe" row, by CSV line
    by_path = {row["image_path"]: row for split in dd.values() for row in split}
    first = by_path[str(tmp_path / "img/p0_0.png")]
    assert _nan_equal(first["labels"], [0.0, float("nan")])  # -1 -> NaN under the default "ignore"
    assert first["findings"] == "The heart is enlarged." and first["impression"] == "Cardiomegaly."
    assert by_path[str(tmp_path / "img/p0_1.png")]["labels"] == [0.0, 1.0]
    assert np.asarray(first["image"]).tolist() == [[0] * 4] * 4
    # Patient-level and hashed: each patient's two images share a split, which patient_level_split predicts
    # from the ids of the rows with valid metadata (P99's image is found missing after the split).
    ids = [f"P{p}" for p in range(12)] + ["P99"]
    expected = patient_level_split(ids, (0.5, 0.25, 0.25), seed=0)
    for split, dataset in dd.items():
        assert sorted(set(dataset["patient_id"])) == sorted(ids[p] for p in expected[split] if ids[p] != "P99")
        assert all(dataset["patient_id"].count(pid) == 2 for pid in set(dataset["patient_id"]))
    with pytest.raises(ValueError, match=r"labels\.csv:27: missing image: empty 'path' cell"):
        load_csv(csv, image_column="path", label_columns=["Edema", "Mass"], patient_column="pid", strict=True)


def test_split_does_not_depend_on_row_order_and_uncertainty_ones(tmp_path):
    rows = _good_rows(tmp_path)
    rows[0]["Mass"] = "-1"
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    a = load_csv(_write(tmp_path, rows, "a.csv"), image_column="path", patient_column="pid", report_column="text",
                 uncertainty="ones", cache_dir=str(tmp_path / "cache"))
    b = load_csv(_write(tmp_path, shuffled, "b.csv"), image_column="path", patient_column="pid", report_column="text",
                 cache_dir=str(tmp_path / "cache"))
    assert get_label_names(a) == ["Edema", "Mass"]  # default: every column not named by another argument
    for split in a:
        assert sorted(a[split]["image_path"]) == sorted(b[split]["image_path"])
    first = next(row for split in a.values() for row in split if row["image_path"].endswith("p0_0.png"))
    assert first["labels"] == [0.0, 1.0]


def test_labels_only_and_every_row_skipped(tmp_path):
    rows = [{"image": f"scans/{i}.png", "Edema": str(i % 2)} for i in range(6)] + [{"image": "", "Edema": "1"}]
    csv = _write(tmp_path, rows)  # no image file exists
    with pytest.raises(ValueError, match=r"all 7 rows were skipped; most common reason: missing image \(7 rows"):
        load_csv(csv, cache_dir=str(tmp_path / "cache"))
    stats = load_csv(csv, labels_only=True, cache_dir=str(tmp_path / "cache"))
    assert "image" not in stats["train"].column_names
    assert sum(split.num_rows for split in stats.values()) == 6 and stats.skipped.by_reason() == {"missing image": 1}
    positives = sum(sum(split["labels"], []).count(1.0) for split in stats.values())
    assert positives == 3


def test_split_column_and_registry_entry(tmp_path):
    rows = _good_rows(tmp_path, n_patients=4)
    for row in rows:
        row["set"] = {"P0": "train", "P1": "train", "P2": "val", "P3": "test"}[row["pid"]]
    csv = _write(tmp_path, rows)
    options = LoaderOptions(root=tmp_path, splits=["train", "test"], cache_dir=str(tmp_path / "cache"),
                            kwargs={"image_column": "path", "patient_column": "pid", "split_column": "set",
                                    "report_column": "text"})
    dd = load_dataset_by_name(str(csv), options)
    assert list(dd) == ["train", "test"]
    assert sorted(set(dd["train"]["patient_id"])) == ["P0", "P1"] and set(dd["test"]["patient_id"]) == {"P3"}
    rows[0]["set"] = "test"  # P0 now in train and test
    with pytest.raises(ValueError, match=r"patient 'P0' is in both"):
        load_csv(_write(tmp_path, rows, "bad.csv"), image_column="path", patient_column="pid", split_column="set",
                 report_column="text")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dataset_by_name(str(tmp_path / "nope.csv"))


def test_plain_datasetdict_gets_the_cxrfm_schema(tmp_path):
    pictures = [PILImage.fromarray(np.full((4, 4), value, np.uint8)) for value in (10, 20, 30)]
    plain = DatasetDict({"train": Dataset.from_dict({"image": pictures, "labels": [[1, 0], [0, 0], [0, 1]]})})
    with pytest.raises(ValueError, match="positive_labels"):
        get_label_names(plain)  # what recipes hit before: no label names, no positive_labels column
    dd = ensure_cxr_schema(plain, label_names=["Edema", "Mass"])
    assert get_label_names(dd) == ["Edema", "Mass"]
    train = dd["train"]
    assert train.features["labels"] == List(Value("float32"), length=2) and isinstance(train.features["image"], Image)
    assert train["positive_labels"] == [[0], [], [1]] and train["patient_id"] == ["train-0", "train-1", "train-2"]
    assert train[0]["is_frontal"] is True and train[0]["report"] == "" and np.asarray(train[2]["image"])[0, 0] == 30
    # Paths in a string column become Image(); default names when none are given.
    write_png(tmp_path / "a.png", size=4, value=7)
    paths = ensure_cxr_schema(Dataset.from_dict({"image": [str(tmp_path / "a.png")], "labels": [[1.0]]}))
    assert get_label_names(paths) == ["label_0"] and paths[0]["image_path"] == str(tmp_path / "a.png")
    assert np.asarray(paths[0]["image"])[0, 0] == 7
    with pytest.raises(ValueError, match=r"no 'labels' column"):
        ensure_cxr_schema(Dataset.from_dict({"image": pictures, "label": [0, 1, 0]}))
    with pytest.raises(ValueError, match=r"column 'labels' must hold vectors of numbers"):
        ensure_cxr_schema(Dataset.from_dict({"image": pictures, "labels": ["a", "b", "c"]}))


def test_saved_plain_datasetdict_through_the_registry(tmp_path):
    pictures = [PILImage.fromarray(np.full((4, 4), value, np.uint8)) for value in (1, 2)]
    plain = DatasetDict({"train": Dataset.from_dict({"image": pictures, "labels": [[1.0], [0.0]]}),
                         "test": Dataset.from_dict({"image": pictures[:1], "labels": [[1.0]]})})
    plain.save_to_disk(str(tmp_path / "mine"))
    dd = load_dataset_by_name(str(tmp_path / "mine"), LoaderOptions(splits=["train"]), label_names=["Edema"])
    assert list(dd) == ["train"] and get_label_names(dd) == ["Edema"] and dd["train"]["positive_labels"] == [[0], []]
    assert ensure_cxr_schema(dd["train"]) is dd["train"]  # already complete: returned unchanged

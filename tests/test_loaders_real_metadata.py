"""The real metadata shipped in TorchXRayVision's wheel, parsed end-to-end by the loaders.

Images are not shipped, so each test creates placeholder images for a sample of rows; the other
rows are counted as skipped (missing image), which is itself checked.
"""

from __future__ import annotations

import ast
import math
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_loaders_helpers import write_dicom, write_jpeg, write_png

from cxrfm.processing.datasets import (
    CHEXPERT_14,
    NIH_14,
    VINDR_28,
    decode_siim_rle,
    get_label_names,
    load_chexpert,
    load_nih,
    load_openi,
    load_padchest,
    load_rsna,
    load_siim,
    load_vindr,
)
from cxrfm.processing.datasets.openi import read_openi_reports
from cxrfm.processing.text import extract_sections

xrv = pytest.importorskip("torchxrayvision")
DATA = Path(xrv.__file__).parent / "data"


def test_chexpert_train_csv(tmp_path):
    frame = pd.read_csv(DATA / "chexpert_train.csv.gz")
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    frame.to_csv(root / "train.csv", index=False)
    sample = frame.sample(200, random_state=0).sort_index()
    for path in sample["Path"]:
        write_jpeg(root / path.split("/", 1)[1], size=4)
    dd = load_chexpert(root, labels="14", splits=("train",), cache_dir=str(tmp_path / "cache"))
    assert dd["train"].num_rows == 200 and dd.skipped.count == len(frame) - 200
    expected = sample[list(CHEXPERT_14)].replace(-1.0, np.nan).to_numpy(np.float32)
    np.testing.assert_array_equal(np.array(dd["train"]["labels"][:], dtype=np.float32), expected)
    frontal = sample["Frontal/Lateral"].eq("Frontal").to_numpy()
    assert list(dd["train"]["is_frontal"][:]) == frontal.tolist()
    assert set(dd["train"]["view"][:]) <= {"AP", "PA", "LATERAL", ""}


def test_padchest_csv_physician_test_and_n_over_100(tmp_path):
    csv = DATA / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    frame = pd.read_csv(csv, low_memory=False)
    sample = frame[frame["Labels"].notna()].sample(150, random_state=0)
    for folder, image in zip(sample["ImageDir"], sample["ImageID"]):
        write_png(tmp_path / "padchest" / str(folder) / image, size=4)
    dd = load_padchest(tmp_path / "padchest", csv_path=csv, labels="n>100", frontal_only=True,
                       cache_dir=str(tmp_path / "cache"))
    physician = frame[(frame["MethodLabel"] == "Physician") & frame["Projection"].isin(["PA", "AP", "AP_horizontal"])]
    counts = Counter(name.strip() for cell in physician["Labels"].dropna() for name in set(ast.literal_eval(cell)) if name.strip())
    assert get_label_names(dd) == sorted(name for name, count in counts.items() if count > 100)
    assert len(get_label_names(dd)) == 73  # frontal physician-labelled set (relaxed-CLIP reports 61 on its subset)
    loaded = sum(split.num_rows for split in dd.values())
    assert 0 < loaded <= 150 and dd["test"].num_rows > 0
    row = dd["test"][0]
    source = frame.set_index("ImageID").loc[Path(row["image_path"]).name]
    names = set(ast.literal_eval(source["Labels"]))
    assert {n for n, v in zip(get_label_names(dd), row["labels"]) if v == 1} == names & set(get_label_names(dd))
    assert row["report"] == source["Report"].strip() and row["label_method"] == "Physician"


def test_nih_data_entry_2017_v2020(tmp_path):
    frame = pd.read_csv(DATA / "Data_Entry_2017_v2020.csv.gz")
    root = tmp_path / "nih"
    root.mkdir()
    shutil.copy(DATA / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv.gz")
    is_test = frame["Patient ID"] % 5 == 0  # stand-in for the official lists (not in the wheel)
    (root / "test_list.txt").write_text("\n".join(frame.loc[is_test, "Image Index"]))
    (root / "train_val_list.txt").write_text("\n".join(frame.loc[~is_test, "Image Index"]))
    sample = frame.sample(200, random_state=1)
    for name in sample["Image Index"]:
        write_png(root / "images" / name, size=4)
    dd = load_nih(root, cache_dir=str(tmp_path / "cache"))
    assert sum(split.num_rows for split in dd.values()) == 200 and dd.skipped.count == len(frame) - 200
    assert set(dd["test"]["patient_id"][:]) <= {str(p) for p in frame.loc[is_test, "Patient ID"]}
    by_name = sample.set_index("Image Index")
    for split in dd.values():
        for row in split:
            tokens = by_name.loc[Path(row["image_path"]).name, "Finding Labels"].split("|")
            assert [name for name, value in zip(NIH_14, row["labels"]) if value == 1] == [n for n in NIH_14 if n in tokens]


def test_vindr_kaggle_annotations_as_physionet_layout(tmp_path):
    boxes = pd.read_csv(DATA / "vinbigdata-train.csv.gz")
    images = sorted(boxes["image_id"].unique())[:40]
    boxes = boxes[boxes["image_id"].isin(images)]
    root = tmp_path / "vindr"
    (root / "annotations").mkdir(parents=True)
    boxes.to_csv(root / "annotations" / "annotations_train.csv", index=False)
    per_reader = boxes.groupby(["image_id", "rad_id"])["class_name"].apply(set).reset_index()
    labels = pd.DataFrame({"image_id": per_reader["image_id"], "rad_ID": per_reader["rad_id"]})
    for name in VINDR_28:
        labels[name] = [int(name in classes) for classes in per_reader["class_name"]]
    labels.to_csv(root / "annotations" / "image_labels_train.csv", index=False)
    for image in images:
        write_dicom(root / "train" / f"{image}.dicom", np.full((4, 4), 9, np.uint16))
    dd = load_vindr(root, splits=("train",), validation_fraction=0.0, with_masks=True, cache_dir=str(tmp_path / "cache"))
    assert dd["train"].num_rows == 40
    for row in dd["train"]:
        image = Path(row["image_path"]).stem
        readers = per_reader[per_reader["image_id"] == image]
        votes = Counter(name for classes in readers["class_name"] for name in classes)
        assert [n for n, v in zip(VINDR_28, row["labels"]) if v == 1] == [n for n in VINDR_28 if votes[n] * 2 > len(readers)]
        own = boxes[(boxes["image_id"] == image) & boxes["x_min"].notna()]
        assert len(row["boxes"]) == len(own)


def test_openi_reports_tgz_sections_agree_with_xml(tmp_path):
    reports = read_openi_reports(DATA / "NLMCXR_reports.tgz")
    assert len(reports) == 3955 and sum(len(r["image_ids"]) for r in reports) == 7470
    for report in reports:  # the text module's sectioner recovers the XML's own fields
        sections = extract_sections(report["report"])
        assert (sections["findings"], sections["impression"]) == (report["findings"], report["impression"]), report["uid"]
    sample = [image for report in reports[:150] for image in report["image_ids"]]
    for image in sample:
        write_png(tmp_path / "openi" / "NLMCXR_png" / f"{image}.png", size=4)
    dd = load_openi(tmp_path / "openi", reports_path=DATA / "NLMCXR_reports.tgz",
                    view_csv=DATA / "nlmcxr_dicom_metadata.csv.gz", frontal_only=True, min_text_length=10,
                    cache_dir=str(tmp_path / "cache"))
    rows = [row for split in dd.values() for row in split]
    assert 0 < len(rows) < len(sample) and all(row["view"] in ("PA", "AP") for row in rows)
    assert dd.skipped.count > 1000  # frontal images of the other reports have no placeholder file
    by_uid = {report["uid"]: report for report in reports}
    for row in rows:
        assert row["findings"] == by_uid[row["uid"]]["findings"]
        assert len(row["findings"] + " " + row["impression"]) >= 10


def test_rsna_kaggle_labels_zip_and_dicom_headers(tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    shutil.copy(DATA / "kaggle_stage_2_train_labels.csv.zip", root / "stage_2_train_labels.csv.zip")
    frame = pd.read_csv(DATA / "kaggle_stage_2_train_labels.csv.zip")
    positives = frame[frame["Target"] == 1]["patientId"].unique()[:20]
    negatives = frame[frame["Target"] == 0]["patientId"].unique()[:20]
    for patient in [*positives, *negatives]:
        write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", np.full((4, 4), 9, np.uint16))
    dd = load_rsna(root, with_masks=True, dicom_headers_csv=DATA / "kaggle_stage_2_train_images_dicom_headers.csv.gz",
                   cache_dir=str(tmp_path / "cache"))
    rows = {row["patient_id"]: row for split in dd.values() for row in split}
    assert len(rows) == 40 and dd.skipped.count == frame["patientId"].nunique() - 40
    for patient in positives:
        own = frame[frame["patientId"] == patient]
        assert rows[patient]["labels"] == [1.0] and len(rows[patient]["boxes"]) == len(own)
        first = own.iloc[0]
        assert rows[patient]["boxes"][0] == pytest.approx(
            [first.x, first.y, first.x + first.width, first.y + first.height])
        assert rows[patient]["view"] in ("PA", "AP")
    assert all(rows[p]["labels"] == [0.0] and rows[p]["boxes"] == [] for p in negatives)


def test_siim_stage1_rle_csv(tmp_path):
    csv = DATA / "siim-pneumothorax-train-rle.csv.gz"
    frame = pd.read_csv(csv)
    frame.columns = [c.strip() for c in frame.columns]
    positive = frame[frame["EncodedPixels"].str.strip() != "-1"]
    image = positive["ImageId"].value_counts().index[0]  # an image with several regions
    runs = [np.asarray(rle.split(), dtype=np.int64)[1::2].sum() for rle in positive.loc[positive["ImageId"] == image, "EncodedPixels"]]
    masks = [decode_siim_rle(rle) for rle in positive.loc[positive["ImageId"] == image, "EncodedPixels"]]
    assert [int(mask.sum()) for mask in masks] == [int(r) for r in runs]  # every run lands inside 1024 x 1024
    negative = frame[frame["EncodedPixels"].str.strip() == "-1"]["ImageId"].iloc[0]
    root = tmp_path / "siim"
    for name in (image, negative):
        write_dicom(root / "dicom-images-train" / "s" / "r" / f"{name}.dcm", np.full((4, 4), 9, np.uint16))
    dd = load_siim(root, csv_path=csv, with_masks=True, fractions=(0.0, 0.0, 1.0), cache_dir=str(tmp_path / "cache"))
    rows = {row["study_id"]: row for row in dd["test"]}
    assert rows[image]["labels"] == [1.0] and len(rows[image]["masks"]) == len(runs) > 1
    assert [int((np.asarray(m) > 0).sum()) for m in rows[image]["masks"]] == [int(r) for r in runs]
    assert rows[negative]["labels"] == [0.0] and not math.isnan(rows[negative]["labels"][0])


def test_openi_and_padchest_without_images_raise_and_labels_only_counts(tmp_path):
    # The shipped label files with no image at all: before, three empty splits and no error.
    (tmp_path / "openi").mkdir()
    with pytest.raises(ValueError, match=r"load_openi: all 7470 rows were skipped; most common reason: missing image"):
        load_openi(tmp_path / "openi", reports_path=DATA / "NLMCXR_reports.tgz", cache_dir=str(tmp_path / "cache"))
    # Labels only on the first 600 reports of the same archive (XML parsing dominates the time).
    with tarfile.open(DATA / "NLMCXR_reports.tgz") as archive:
        members = [m for m in archive if m.isfile() and m.name.endswith(".xml")][:600]
        texts = [archive.extractfile(m).read().decode() for m in members]
    (tmp_path / "ecgen-radiology").mkdir()
    for member, text in zip(members, texts):
        (tmp_path / "ecgen-radiology" / Path(member.name).name).write_text(text)
    stats = load_openi(tmp_path / "openi", reports_path=tmp_path / "ecgen-radiology", labels_only=True,
                       cache_dir=str(tmp_path / "cache"))
    n_images = sum(text.count("<parentImage ") for text in texts)
    assert sum(split.num_rows for split in stats.values()) == n_images > 1000 and stats.skipped.count == 0
    labels = np.concatenate([np.array(split["labels"][:], dtype=np.float32) for split in stats.values()])
    # Reference count straight from the XML text: images of reports with a Cardiomegaly MeSH major term.
    cardiomegaly = sum(text.count("<parentImage ") for text in texts
                       if re.search(r"<major>\s*cardiomegaly\s*(/|</major>)", text, re.IGNORECASE))
    assert int((labels[:, get_label_names(stats).index("Cardiomegaly")] == 1).sum()) == cardiomegaly > 0
    # PadChest: the full CSV takes ~20 s per pass, so the first 3,000 rows of the shipped file.
    frame = pd.read_csv(DATA / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", low_memory=False, nrows=3000)
    csv = tmp_path / "padchest.csv"
    frame.to_csv(csv, index=False)
    (tmp_path / "padchest").mkdir()
    with pytest.raises(ValueError, match=r"load_padchest: all \d+ rows were skipped; most common reason: missing image"):
        load_padchest(tmp_path / "padchest", csv_path=csv, cache_dir=str(tmp_path / "cache"))
    stats = load_padchest(tmp_path / "padchest", csv_path=csv, labels_only=True, cache_dir=str(tmp_path / "cache"))
    names = get_label_names(stats)
    rows = [row for split in stats.values() for row in split]
    assert "image" not in stats["train"].column_names and len(rows) > 2000
    by_id = frame.set_index("ImageID")
    for row in rows[:200]:
        cell = by_id.loc[Path(row["image_path"]).name, "Labels"]
        listed = {name.strip() for name in ast.literal_eval(cell)} if isinstance(cell, str) else set()
        assert {n for n, v in zip(names, row["labels"]) if v == 1} == listed & set(names)

"""Bad input: each case is a clear error naming the file and the reason, or a counted skip."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from test_loaders_helpers import make_chexpert, make_mimic, make_nih, make_vindr, write_dicom

from cxrfm.processing.datasets import VINDR_28, load_chexpert, load_cxr_lt, load_mimic_cxr, load_nih, load_vindr


def test_missing_root_names_the_folder_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"load_chexpert: root .*nowhere.* is not a directory.*train\.csv"):
        load_chexpert(missing)
    with pytest.raises(FileNotFoundError, match=r"load_nih: none of .*Data_Entry_2017"):
        load_nih(tmp_path)


def test_csv_missing_label_columns_names_csv_and_columns(tmp_path):
    root = make_chexpert(tmp_path)
    frame = pd.read_csv(root / "train.csv").drop(columns=["Edema", "Cardiomegaly"])
    frame.to_csv(root / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train\.csv: missing label column\(s\) \['Cardiomegaly', 'Edema'\]"):
        load_chexpert(root, labels="5", cache_dir=str(tmp_path / "cache"))
    frame.drop(columns=["Path"]).to_csv(root / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train\.csv' is missing column\(s\) \['Path'\]"):
        load_chexpert(root, labels="5", cache_dir=str(tmp_path / "cache"))


def test_label_columns_are_matched_by_name_not_position(tmp_path):
    root = make_chexpert(tmp_path)
    frame = pd.read_csv(root / "train.csv")
    columns = list(frame.columns)
    shuffled = columns[:5] + list(np.random.default_rng(0).permutation(columns[5:]))
    frame[shuffled].to_csv(root / "train.csv", index=False)
    shuffled_dd = load_chexpert(root, labels="5", cache_dir=str(tmp_path / "cache"))
    frame.to_csv(root / "train.csv", index=False)
    original = load_chexpert(root, labels="5", cache_dir=str(tmp_path / "cache2"))
    np.testing.assert_array_equal(np.array(shuffled_dd["train"]["labels"][:]), np.array(original["train"]["labels"][:]))


def test_missing_csv_file_and_bad_label_values(tmp_path):
    root = make_chexpert(tmp_path)
    (root / "valid.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no valid\.csv under"):
        load_chexpert(root, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"load_cxr_lt: no CXR-LT label CSV"):
        load_cxr_lt(tmp_path)
    frame = pd.read_csv(root / "train.csv")
    frame.loc[0, "Edema"] = 2
    frame.to_csv(root / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"label values must be 1, 0, -1 or blank; found \[2\.0\]"):
        load_chexpert(root, splits=("train",), cache_dir=str(tmp_path / "cache"))


def test_path_in_csv_that_does_not_exist_is_counted_or_raises(tmp_path, caplog):
    root = make_chexpert(tmp_path)
    gone = root / "train/patient00002/study1/view1_frontal.jpg"
    gone.unlink()
    with caplog.at_level(logging.WARNING):
        dd = load_chexpert(root, cache_dir=str(tmp_path / "cache"))
    assert dd["train"].num_rows == 3 and dd.skipped.count == 1
    assert dd.skipped.paths() == [str(gone)] and dd.skipped.by_reason() == {"missing image": 1}
    assert str(gone) in caplog.text and "missing image: file not found" in caplog.text
    with pytest.raises(ValueError, match=r"chexpert \[train\]: .*patient00002/study1/view1_frontal\.jpg: missing image"):
        load_chexpert(root, strict=True, cache_dir=str(tmp_path / "cache"))


def test_corrupt_image_is_skipped_with_verify_or_raises_when_strict(tmp_path):
    root = make_chexpert(tmp_path)
    corrupt = root / "valid/patient64542/study1/view1_frontal.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    dd = load_chexpert(root, verify_images=True, cache_dir=str(tmp_path / "cache"))
    assert dd["validation"].num_rows == 1 and dd.skipped.paths() == [str(corrupt)]
    assert dd.skipped.by_reason() == {"unreadable image": 1}
    with pytest.raises(ValueError, match=r"view1_frontal\.jpg: unreadable image"):
        load_chexpert(root, verify_images=True, strict=True, cache_dir=str(tmp_path / "cache"))


def test_corrupt_dicom_decode_error_names_the_file(tmp_path):
    root = make_vindr(tmp_path, VINDR_28)
    bad = root / "test" / "ttt.dicom"
    data = bad.read_bytes()
    bad.write_bytes(data[:-40])  # truncated pixel data
    dd = load_vindr(root, splits=("test",), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"ttt\.dicom"):
        dd["test"][0]["image"]
    # Its only row is unreadable, so the load skips every row: an error names the reason and the file.
    with pytest.raises(ValueError, match=r"all 1 rows were skipped; most common reason: unreadable image.*ttt\.dicom"):
        load_vindr(root, splits=("test",), verify_images=True, cache_dir=str(tmp_path / "cache"))
    write_dicom(bad, np.full((8, 8), 7, np.uint16))  # repaired file decodes
    assert np.asarray(load_vindr(root, splits=("test",), cache_dir=str(tmp_path / "c2"))["test"][0]["image"]).shape == (8, 8)


def test_empty_and_missing_reports_are_counted_or_raise(tmp_path):
    root, reports = make_mimic(tmp_path)
    empty = reports / "files/p11/p11000002/s50000003.txt"
    empty.write_text("  \n")
    missing = reports / "files/p12/p12000003/s50000004.txt"
    missing.unlink()
    dd = load_mimic_cxr(root, reports_root=reports, cache_dir=str(tmp_path / "cache"))
    assert dd["validation"].num_rows == 0 and dd["test"].num_rows == 0 and dd["train"].num_rows == 3
    assert dd.skipped.by_reason() == {"empty report": 1, "missing report": 2}
    with pytest.raises(ValueError, match=r"s50000003\.txt: empty report: the file has no text"):
        load_mimic_cxr(root, reports_root=reports, splits=("validation",), strict=True, cache_dir=str(tmp_path / "cache"))


def test_unknown_nih_finding_and_label_set_are_errors(tmp_path):
    root = make_nih(tmp_path)
    frame = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    frame.loc[2, "Finding Labels"] = "Cardiomegaly|Efusion"
    frame.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    with pytest.raises(ValueError, match=r"Data_Entry_2017_v2020\.csv: unknown finding name\(s\) \['Efusion'\]"):
        load_nih(root)
    with pytest.raises(ValueError, match=r"unknown label set '7'"):
        load_chexpert(make_chexpert(tmp_path), labels="7")
    with pytest.raises(ValueError, match=r"uncertainty policy 'maybe' unknown"):
        load_chexpert(tmp_path / "CheXpert-v1.0-small", uncertainty="maybe", cache_dir=str(tmp_path / "cache"))

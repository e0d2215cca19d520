"""Each loader on a tiny copy of its collection's official layout: labels by name, splits, schema."""

from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import Dataset, Features, Image
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
    write_dicom,
)

from cxrfm.processing.datasets import (
    CHEXPERT_5,
    CHEXPERT_14,
    CXR_LT_40,
    VINDR_20,
    VINDR_28,
    cxr_features,
    decode_siim_rle,
    get_label_names,
    load_chexpert,
    load_covidx,
    load_cxr_lt,
    load_jsrt,
    load_mimic_cxr,
    load_montgomery,
    load_nih,
    load_openi,
    load_padchest,
    load_plco,
    load_rsna,
    load_shenzhen,
    load_siim,
    load_vindr,
    register_cxr_image_plugins,
)
from cxrfm.processing.image_processing_cxr import load_cxr_image

COMMON = list(cxr_features(["x"]))


def _labels(row, names):
    return dict(zip(names, row["labels"]))


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def _assert_common_schema(dataset_dict):
    names = get_label_names(dataset_dict)
    for split in dataset_dict.values():
        assert list(split.features)[: len(COMMON)] == COMMON
        assert split.features["labels"].length == len(names)


def _assert_patients_disjoint(dataset_dict):
    seen = {}
    for split, dataset in dataset_dict.items():
        for patient in set(list(dataset["patient_id"])):
            assert seen.setdefault(patient, split) == split, f"patient {patient} in {seen[patient]} and {split}"


def test_chexpert_labels_by_name_and_uncertainty_policies(tmp_path):
    root = make_chexpert(tmp_path)
    dd = load_chexpert(root, labels="5", cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["train", "validation"] and dd["train"].num_rows == 4 and dd.skipped.count == 0
    assert get_label_names(dd) == list(CHEXPERT_5)
    first = _labels(dd["train"][0], CHEXPERT_5)
    assert first["Cardiomegaly"] == 1 and first["Atelectasis"] == 0 and math.isnan(first["Edema"])
    assert math.isnan(first["Consolidation"])  # blank = not mentioned
    assert dd["train"][0]["positive_labels"] == [CHEXPERT_5.index("Cardiomegaly")]
    assert dd["train"][0]["view"] == "AP" and dd["train"][0]["is_frontal"]
    assert dd["train"][1]["view"] == "LATERAL" and not dd["train"][1]["is_frontal"]
    assert dd["train"][0]["patient_id"] == "patient00001" and dd["train"][0]["study_id"] == "patient00001/study1"
    assert dd["train"][2]["age"] == 50 and dd["train"][2]["sex"] == "Male"
    assert dd["train"][0]["image"].size == (8, 8)
    ones = load_chexpert(root, labels="5", uncertainty="U-Ones", cache_dir=str(tmp_path / "cache"))
    zeros = load_chexpert(root, labels="5", uncertainty="zeros", blank_as_negative=True, frontal_only=True,
                          cache_dir=str(tmp_path / "cache"))
    assert _labels(ones["train"][0], CHEXPERT_5)["Edema"] == 1
    assert _labels(ones["train"][2], CHEXPERT_5)["Pleural Effusion"] == 1
    assert zeros["train"].num_rows == 3 and _labels(zeros["train"][0], CHEXPERT_5) == {
        "Atelectasis": 0, "Cardiomegaly": 1, "Consolidation": 0, "Edema": 0, "Pleural Effusion": 0}
    full = load_chexpert(root, labels="14", cache_dir=str(tmp_path / "cache"))
    assert get_label_names(full) == list(CHEXPERT_14)
    assert _labels(full["train"][3], CHEXPERT_14)["No Finding"] == 1
    _assert_common_schema(full)


def test_mimic_cxr_official_split_reports_and_labelers(tmp_path):
    root, reports = make_mimic(tmp_path)
    dd = load_mimic_cxr(root, reports_root=reports, labels="14", cache_dir=str(tmp_path / "cache"))
    assert {split: dd[split].num_rows for split in dd} == {"train": 3, "validation": 1, "test": 2}
    row = dd["train"][0]
    assert row["dicom_id"] == "d1" and row["view"] == "PA" and row["patient_id"] == "10000001"
    assert row["image_path"].endswith("files/p10/p10000001/s50000001/d1.jpg")
    assert row["findings"] == "Heart is enlarged. No effusion." and row["impression"] == "Cardiomegaly."
    assert "EXAMINATION" in row["report"]
    labels = _labels(row, CHEXPERT_14)
    assert labels["Cardiomegaly"] == 1 and labels["Pleural Effusion"] == 0 and math.isnan(labels["Edema"])
    test_labels = _labels(dd["test"][0], CHEXPERT_14)
    assert test_labels["Edema"] == 1 and math.isnan(test_labels["Cardiomegaly"])  # -1 ignored
    assert dd["validation"][0]["findings"] == "" and dd["validation"][0]["impression"] == "Small left pleural effusion."
    _assert_patients_disjoint(dd)
    frontal = load_mimic_cxr(root, labeler="negbio", labels=["Cardiomegaly", "Edema"], frontal_only=True,
                             cache_dir=str(tmp_path / "cache"))
    assert frontal["train"].num_rows == 2 and frontal["test"].num_rows == 1
    assert frontal["test"][0]["labels"] == [0.0, 1.0]  # negbio fixture has 0 where chexpert has -1
    assert frontal["train"][0]["report"] == ""  # no reports_root -> no text


def test_cxr_lt_reads_40_labels_by_name_and_mimic_views(tmp_path):
    mimic_root, _ = make_mimic(tmp_path, with_reports=False)
    root = make_cxr_lt(tmp_path, mimic_root, CXR_LT_40)
    dd = load_cxr_lt(root, image_root=mimic_root, cache_dir=str(tmp_path / "cache"))
    assert list(dd) == ["train", "validation"] and get_label_names(dd) == list(CXR_LT_40)
    first = _labels(dd["train"][0], CXR_LT_40)
    assert first["Cardiomegaly"] == 1 and first["Azygos Lobe"] == 1 and sum(first.values()) == 2
    assert _labels(dd["validation"][0], CXR_LT_40)["Round(ed) Atelectasis"] == 1
    assert [row["view"] for row in dd["train"]] == ["PA", "LATERAL", "PA"]
    frontal = load_cxr_lt(root, image_root=mimic_root, frontal_only=True, cache_dir=str(tmp_path / "cache"))
    assert frontal["train"].num_rows == 2
    _assert_common_schema(dd)


def test_nih_official_test_list_and_patient_level_validation(tmp_path):
    root = make_nih(tmp_path)
    dd = load_nih(root, labels="15", validation_fraction=0.34, cache_dir=str(tmp_path / "cache"))
    assert list(dd["test"]["study_id"]) == ["00000004_000", "00000005_000"]
    assert dd["train"].num_rows + dd["validation"].num_rows == 4
    _assert_patients_disjoint(dd)
    rows = {row["study_id"]: row for split in dd.values() for row in split}
    names = get_label_names(dd)
    assert _labels(rows["00000001_001"], names)["Emphysema"] == 1 and _labels(rows["00000001_001"], names)["Cardiomegaly"] == 1
    assert _labels(rows["00000002_000"], names)["No Finding"] == 1 and sum(rows["00000002_000"]["labels"]) == 1
    assert rows["00000003_000"]["sex"] == "F" and rows["00000003_000"]["age"] == 74
    image = rows["00000002_000"]["image"]
    assert image.mode.startswith("I") and np.asarray(image).max() == 3000  # 16-bit PNG kept at 16 bits


def test_padchest_physician_test_set_and_label_counts(tmp_path):
    root = make_padchest(tmp_path)
    dd = load_padchest(root, validation_fraction=0.5, cache_dir=str(tmp_path / "cache"))
    assert sorted(list(dd["test"]["study_id"])) == ["s1", "s1", "s2"]  # the physician-labelled images
    non_test = list(dd["train"]["patient_id"]) + list(dd["validation"]["patient_id"])
    assert "pB" not in non_test  # pB's RNN-labelled image is left out: no patient in two splits
    _assert_patients_disjoint(dd)
    names = get_label_names(dd)
    assert names == ["cardiomegaly", "nodule", "normal", "pleural effusion"]
    row = dd["test"].filter(lambda r: r["study_id"] == "s2")[0]
    assert _labels(row, names) == {"cardiomegaly": 1, "nodule": 0, "normal": 0, "pleural effusion": 1}
    assert row["report"] == "cardiomegalia ." and row["view"] == "PA"
    all_rows = [row for split in dd.values() for row in split]
    unlabeled = [row for row in all_rows if row["study_id"] == "s6"]
    assert unlabeled and all(math.isnan(value) for value in unlabeled[0]["labels"])
    counted = load_padchest(root, labels="n>0", frontal_only=True, cache_dir=str(tmp_path / "cache"))
    assert get_label_names(counted) == ["cardiomegaly", "normal", "pleural effusion"]  # >0 positives in test
    assert counted["test"].num_rows == 2


def test_vindr_majority_vote_official_test_and_boxes(tmp_path):
    root = make_vindr(tmp_path, VINDR_28)
    dd = load_vindr(root, labels="20", validation_fraction=0.0, with_masks=True, splits=("train", "test"),
                    cache_dir=str(tmp_path / "cache"))
    assert get_label_names(dd) == list(VINDR_20)
    rows = {row["study_id"]: row for row in dd["train"]}
    assert _labels(rows["aaa"], VINDR_20)["Cardiomegaly"] == 1  # 2 of 3 readers
    assert _labels(rows["aaa"], VINDR_20)["Aortic enlargement"] == 0  # 1 of 3
    assert sum(rows["bbb"]["labels"]) == 0 and _labels(rows["ccc"], VINDR_20)["Pleural effusion"] == 1
    assert rows["aaa"]["boxes"] == [[1, 2, 5, 6], [1, 1, 6, 6], [3, 1, 4, 2]]
    assert rows["aaa"]["box_labels"] == [VINDR_20.index("Cardiomegaly")] * 2 + [VINDR_20.index("Aortic enlargement")]
    test = dd["test"][0]
    assert _labels(test, VINDR_20)["Pneumothorax"] == 1 and _labels(test, VINDR_20)["Other diseases"] == 1
    image = test["image"]  # DICOM decoded by Image() through load_cxr_image
    assert image.mode == "I;16" and round(np.asarray(image).mean() / 65535 * 4095) == 2000
    anyvote = load_vindr(root, labels=["Aortic enlargement", "Nodule/Mass"], train_vote="any", splits=("train",),
                         validation_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    assert {row["study_id"]: row["labels"] for row in anyvote["train"]} == {
        "aaa": [1.0, 0.0], "bbb": [0.0, 1.0], "ccc": [0.0, 0.0]}


def test_openi_xml_fields_mesh_labels_and_report(tmp_path):
    root = make_openi(tmp_path)
    dd = load_openi(root, fractions=(0.0, 0.0, 1.0), cache_dir=str(tmp_path / "cache"))
    test = dd["test"]
    assert test.num_rows == 4 and list(test["patient_id"]).count("CXR1") == 2
    rows = {row["image_id"]: row for row in test}
    second = rows["CXR2_IM-0652-1001"]
    assert second["findings"] == "Heart is enlarged. Small left pleural effusion."
    assert second["impression"] == "Cardiomegaly with effusion."
    assert second["report"].splitlines()[2] == "FINDINGS: Heart is enlarged. Small left pleural effusion."
    names = get_label_names(dd)
    labels = _labels(second, names)
    assert labels["Cardiomegaly"] == 1 and labels["Pleural Effusion"] == 1 and labels["Support Devices"] == 1
    assert sum(labels.values()) == 3
    assert sum(rows["CXR1_1_IM-0001-3001"]["labels"]) == 0
    assert all(math.isnan(v) for v in rows["CXR3_IM-1384-1001"]["labels"])  # "No Indexing"
    short = load_openi(root, fractions=(0.0, 0.0, 1.0), min_text_length=10, cache_dir=str(tmp_path / "cache"))
    assert short["test"].num_rows == 3


def test_shenzhen_and_montgomery_file_name_labels_and_readings(tmp_path):
    dd = load_shenzhen(make_shenzhen(tmp_path), fractions=(0.5, 0.0, 0.5), cache_dir=str(tmp_path / "cache"))
    rows = {row["patient_id"]: row for split in dd.values() for row in split}
    assert rows["CHNCXR_0327"]["labels"] == [1.0] and rows["CHNCXR_0001"]["labels"] == [0.0]
    assert rows["CHNCXR_0327"]["report"] == "PTB in the right upper field"
    assert rows["CHNCXR_0327"]["sex"] == "M" and rows["CHNCXR_0327"]["age"] == 27
    assert rows["CHNCXR_0328"]["age"] == pytest.approx(0.75)
    assert rows["CHNCXR_0002"]["sex"] == "F" and rows["CHNCXR_0002"]["view"] == "PA"
    mc = load_montgomery(make_montgomery(tmp_path), fractions=(0.5, 0.0, 0.5), cache_dir=str(tmp_path / "cache"))
    rows = {row["patient_id"]: row for split in mc.values() for row in split}
    assert rows["MCUCXR_0104"]["labels"] == [1.0] and rows["MCUCXR_0104"]["age"] == 39
    assert rows["MCUCXR_0104"]["sex"] == "F" and rows["MCUCXR_0104"]["report"] == "Right upper lobe cavitary infiltrate."


def test_jsrt_raw_img_decoding_and_nodule_box(tmp_path):
    dd = load_jsrt(make_jsrt(tmp_path), with_masks=True, fractions=(0.5, 0.0, 0.5), cache_dir=str(tmp_path / "cache"))
    rows = {row["patient_id"]: row for split in dd.values() for row in split}
    nodule, normal = rows["JPCLN001"], rows["JPCNN001"]
    assert nodule["labels"] == [1.0] and normal["labels"] == [0.0]
    assert nodule["age"] == 53 and nodule["sex"] == "M" and nodule["malignant"] == "malignant" and nodule["subtlety"] == 3
    assert normal["age"] == 47 and normal["sex"] == "F" and normal["boxes"] == []
    radius = 15 / 0.175 / 2
    assert nodule["boxes"][0] == pytest.approx([1634 - radius, 692 - radius, 1634 + radius, 692 + radius], abs=1e-3)
    pixels = np.asarray(normal["image"])  # raw 1000 (film convention) -> inverted 16-bit
    assert pixels.shape == (2048, 2048) and pixels[0, 0] == 65535
    assert pixels[100, 100] == round((4095 - 1000) * 65535 / 4095)


def test_rsna_boxes_and_patient_split(tmp_path):
    dd = load_rsna(make_rsna(tmp_path), with_masks=True, fractions=(0.34, 0.33, 0.33), cache_dir=str(tmp_path / "cache"))
    rows = {row["patient_id"]: row for split in dd.values() for row in split}
    assert rows["p-bbb"]["labels"] == [1.0] and rows["p-aaa"]["labels"] == [0.0]
    assert rows["p-bbb"]["boxes"] == [[10, 20, 40, 60], [50, 60, 55, 65]] and rows["p-aaa"]["boxes"] == []
    assert rows["p-ccc"]["detailed_class"] == "No Lung Opacity / Not Normal" and rows["p-ccc"]["is_frontal"]
    assert np.asarray(rows["p-aaa"]["image"]).shape == (8, 8)
    _assert_patients_disjoint(dd)


def test_siim_rle_masks_relative_and_absolute():
    relative = decode_siim_rle("1 2 3 1", 4, 4, relative=True)  # runs at flat 1-2 and 6 (column-major)
    absolute = decode_siim_rle("2 2 7 1", 4, 4, relative=False)
    expected = np.zeros((4, 4), np.uint8)
    expected[1, 0] = expected[2, 0] = expected[2, 1] = 1
    np.testing.assert_array_equal(relative, expected)
    np.testing.assert_array_equal(absolute, expected)
    assert decode_siim_rle("-1", 4, 4).sum() == 0
    with pytest.raises(ValueError, match="outside"):
        decode_siim_rle("10 10", 4, 4)


def test_siim_loader_labels_masks_and_boxes(tmp_path):
    dd = load_siim(make_siim(tmp_path), with_masks=True, mask_size=4, read_patient_ids=True,
                   fractions=(0.34, 0.33, 0.33), cache_dir=str(tmp_path / "cache"))
    rows = {row["study_id"]: row for split in dd.values() for row in split}
    assert rows["1.2.1"]["labels"] == [0.0] and rows["1.2.1"]["masks"] == []
    assert rows["1.2.2"]["labels"] == [1.0] and rows["1.2.3"]["labels"] == [1.0]
    mask = np.asarray(rows["1.2.2"]["masks"][0]) > 0  # flat 5-6 column-major -> (1,1), (2,1)
    assert mask.sum() == 2 and mask[1, 1] and mask[2, 1]
    assert rows["1.2.2"]["boxes"] == [[1, 1, 2, 3]]
    assert len(rows["1.2.3"]["masks"]) == 2 and rows["1.2.3"]["box_labels"] == [0, 0]
    assert rows["1.2.1"]["patient_id"] == "P1.2.1"  # from the DICOM header


def test_covidx_official_split_files(tmp_path):
    dd = load_covidx(make_covidx(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert {split: dd[split].num_rows for split in dd} == {"train": 2, "validation": 1, "test": 1}
    assert get_label_names(dd) == ["COVID-19"]
    assert list(dd["train"]["labels"]) == [[1.0], [0.0]] and list(dd["train"]["source"]) == ["bimcv", "rsna"]
    assert dd["test"][0]["patient_id"] == "104" and dd["test"][0]["image"].format == "JPEG"


def test_plco_time_to_event_columns(tmp_path):
    dd = load_plco(make_plco(tmp_path), exam_day_column="xry_days", fractions=(0.5, 0.25, 0.25),
                   cache_dir=str(tmp_path / "cache"))
    rows = {row["study_id"]: row for split in dd.values() for row in split}
    assert get_label_names(dd) == ["is_dead", "is_dead_cvd"]
    assert rows["img_a"]["survival_time"] == pytest.approx(9.0) and rows["img_b"]["survival_time"] == pytest.approx(8.0)
    assert rows["img_a"]["survival_event"] is True and rows["img_c"]["survival_event"] is False
    assert rows["img_d"]["labels"] == [1.0, 0.0] and rows["img_c"]["survival_time"] == pytest.approx(20.0)
    _assert_patients_disjoint(dd)


def test_dicom_through_image_feature_matches_the_processor_reader(tmp_path):
    """``Image()`` decodes DICOM via ``load_cxr_image``: MONOCHROME1 inverted, 16-bit, same values."""
    register_cxr_image_plugins()
    register_cxr_image_plugins()  # idempotent
    pixels = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 85)
    path = write_dicom(tmp_path / "mono1.dcm", pixels, photometric="MONOCHROME1")
    decoded = Dataset.from_dict({"image": [str(path)]}, features=Features({"image": Image()}))[0]["image"]
    reference = load_cxr_image(str(path))
    assert decoded.mode == "I;16" and decoded.size == (8, 6)
    np.testing.assert_allclose(np.asarray(decoded) / 65535.0, reference, atol=0.5 / 65535)
    assert reference[0, 0] == 1.0  # MONOCHROME1: raw 0 is displayed white

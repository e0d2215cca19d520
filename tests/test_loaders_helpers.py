"""Fixture writers for the loader tests: tiny copies of each collection's official on-disk layout.

No tests here; the ``test_loaders_*`` files import these writers.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

NAN = float("nan")


def write_png(path: Path, size: int = 8, value: int = 100, bits: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if bits == 16 else np.uint8
    Image.fromarray(np.full((size, size), value, dtype=dtype)).save(path)
    return path


def write_jpeg(path: Path, size: int = 8, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path, format="JPEG")
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12) -> Path:
    """A CR DICOM file whose PatientID derives from the file name (the loaders read it from the header)."""
    from dicom_fixtures import make_dicom, save_dicom

    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = make_dicom(np.asarray(pixels, dtype=np.uint16), photometric, bits_stored,
                         Modality="CR", PatientID="P" + path.stem[:6])
    return save_dicom(dataset, path)


def write_csv_gz(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        frame.to_csv(handle, index=False)
    return path


# -- CheXpert ---------------------------------------------------------------------------------

CHEXPERT_COLUMNS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
]


def make_chexpert(root: Path) -> Path:
    """4 train rows (patients 1-3, one lateral) + 2 valid rows; label columns in reversed order."""
    base = root / "CheXpert-v1.0-small"
    rows = [
        ("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", {"Cardiomegaly": 1, "Edema": -1, "Atelectasis": 0}),
        ("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", None, {"Cardiomegaly": 1}),
        ("train/patient00002/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA", {"Pleural Effusion": -1, "Consolidation": 1}),
        ("train/patient00003/study2/view1_frontal.jpg", "Male", 40, "Frontal", "PA", {"No Finding": 1}),
    ]
    valid = [
        ("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP", {"Edema": 1, "Cardiomegaly": 0}),
        ("valid/patient64542/study1/view1_frontal.jpg", "Female", 70, "Frontal", "PA", {"Atelectasis": 1}),
    ]
    for name, entries in (("train.csv", rows), ("valid.csv", valid)):
        records = []
        for path, sex, age, frontal, appa, labels in entries:
            record = {"Path": f"CheXpert-v1.0-small/{path}", "Sex": sex, "Age": age, "Frontal/Lateral": frontal, "AP/PA": appa}
            record.update({column: labels.get(column, NAN) for column in reversed(CHEXPERT_COLUMNS)})
            records.append(record)
            write_jpeg(base / path)
        base.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(records).to_csv(base / name, index=False)
    return base


# -- MIMIC-CXR-JPG + reports ------------------------------------------------------------------

MIMIC_REPORTS = {
    50000001: "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n FINDINGS: Heart is enlarged. No effusion.\n\n"
              " IMPRESSION: Cardiomegaly.\n",
    50000002: "FINAL REPORT\n FINDINGS: Lungs are clear.\n\n IMPRESSION: No acute process.\n",
    50000003: "FINAL REPORT\n IMPRESSION: Small left pleural effusion.\n",
    50000004: "FINAL REPORT\n FINDINGS: Mild edema.\n IMPRESSION: Edema.\n",
}


def make_mimic(root: Path, *, with_reports: bool = True) -> tuple[Path, Path]:
    """3 subjects, 4 studies, 6 images (2 lateral); official split train/validate/test by subject."""
    images = [  # dicom_id, subject, study, view, split
        ("d1", 10000001, 50000001, "PA", "train"),
        ("d2", 10000001, 50000001, "LATERAL", "train"),
        ("d3", 10000001, 50000002, "AP", "train"),
        ("d4", 11000002, 50000003, "PA", "validate"),
        ("d5", 12000003, 50000004, "AP", "test"),
        ("d6", 12000003, 50000004, "LL", "test"),
    ]
    base = root / "mimic-cxr-jpg"
    write_csv_gz(pd.DataFrame([(d, t, s, sp) for d, s, t, _, sp in images], columns=["dicom_id", "study_id", "subject_id", "split"]),
                 base / "mimic-cxr-2.0.0-split.csv.gz")
    write_csv_gz(pd.DataFrame([(d, s, t, "CHEST", v, 8, 8) for d, s, t, v, _ in images],
                              columns=["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                       "ViewPosition", "Rows", "Columns"]), base / "mimic-cxr-2.0.0-metadata.csv.gz")
    labels = {
        50000001: {"Cardiomegaly": 1.0, "Pleural Effusion": 0.0},
        50000002: {"No Finding": 1.0},
        50000003: {"Pleural Effusion": 1.0, "Atelectasis": -1.0},
        50000004: {"Edema": 1.0, "Cardiomegaly": -1.0},
    }
    subject_of = {t: s for _, s, t, _, _ in images}
    for labeler, flip in (("chexpert", False), ("negbio", True)):
        records = []
        for study, values in labels.items():
            record = {"subject_id": subject_of[study], "study_id": study}
            for column in CHEXPERT_COLUMNS:
                value = values.get(column, NAN)
                record[column] = (0.0 if value == -1 else value) if flip else value
            records.append(record)
        write_csv_gz(pd.DataFrame(records), base / f"mimic-cxr-2.0.0-{labeler}.csv.gz")
    for dicom, subject, study, _, _ in images:
        write_jpeg(base / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    reports = root / "mimic-cxr-reports"
    if with_reports:
        for study, text in MIMIC_REPORTS.items():
            subject = str(subject_of[study])
            path = reports / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return base, reports


def make_cxr_lt(root: Path, mimic_root: Path, cxr_lt_40) -> Path:
    """train_labeled.csv + development.csv over the MIMIC fixture images; label columns shuffled."""
    base = root / "cxr-lt-2024"
    base.mkdir(parents=True)
    rng = np.random.default_rng(3)
    order = list(cxr_lt_40)
    rng.shuffle(order)
    entries = {
        "train_labeled.csv": [("d1", 10000001, 50000001, {"Cardiomegaly": 1, "Azygos Lobe": 1}),
                              ("d2", 10000001, 50000001, {"Cardiomegaly": 1}),
                              ("d4", 11000002, 50000003, {"Pleural Effusion": 1})],
        "development.csv": [("d5", 12000003, 50000004, {"Edema": 1, "Round(ed) Atelectasis": 1})],
    }
    for name, rows in entries.items():
        records = []
        for dicom, subject, study, positives in rows:
            record = {"dicom_id": dicom, "subject_id": subject, "study_id": study,
                      "fpath": f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"}
            record.update({column: float(positives.get(column, 0)) for column in order})
            records.append(record)
        pd.DataFrame(records).to_csv(base / name, index=False)
    return base


# -- NIH ChestX-ray14 (Kaggle-style images_0XX/images/) ----------------------------------------

def make_nih(root: Path) -> Path:
    base = root / "nih"
    rows = [
        ("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA"),
        ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
        ("00000002_000.png", "No Finding", 0, 2, 81, "M", "AP"),
        ("00000003_000.png", "Hernia|Pleural_Thickening", 0, 3, 74, "F", "PA"),
        ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP"),
        ("00000005_000.png", "Effusion", 0, 5, 69, "F", "PA"),
    ]
    frame = pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                                        "Patient Gender", "View Position"])
    base.mkdir(parents=True)
    frame.to_csv(base / "Data_Entry_2017_v2020.csv", index=False)
    (base / "train_val_list.txt").write_text("\n".join(name for name, *_ in rows[:4]) + "\n")
    (base / "test_list.txt").write_text("\n".join(name for name, *_ in rows[4:]) + "\n")
    for index, (name, *_) in enumerate(rows):
        write_png(base / f"images_00{1 + index % 2}" / "images" / name, bits=16, value=1000 * (index + 1))
    return base


# -- PadChest ---------------------------------------------------------------------------------

def make_padchest(root: Path) -> Path:
    base = root / "padchest"
    rows = [  # image, dir, study, patient, projection, method, labels, report
        ("img1.png", 0, "s1", "pA", "PA", "Physician", "['normal']", " sin hallazg patolog ."),
        ("img2.png", 0, "s1", "pA", "L", "Physician", "['normal']", " sin hallazg patolog ."),
        ("img3.png", 1, "s2", "pB", "PA", "Physician", "['cardiomegaly', 'pleural effusion']", " cardiomegalia ."),
        ("img4.png", 1, "s3", "pC", "AP_horizontal", "RNN_model", "['cardiomegaly']", " cardiomegalia ."),
        ("img5.png", 2, "s4", "pB", "PA", "RNN_model", "['nodule']", " nodulo ."),
        ("img6.png", 2, "s5", "pD", "PA", "RNN_model", "['pleural effusion', 'nodule']", " derrame ."),
        ("img7.png", 2, "s6", "pE", "PA", "RNN_model", None, " ."),
    ]
    records = []
    for image, folder, study, patient, projection, method, labels, report in rows:
        records.append({"ImageID": image, "ImageDir": folder, "StudyDate_DICOM": 20150914, "StudyID": study,
                        "PatientID": patient, "PatientBirth": 1950.0, "PatientSex_DICOM": "F", "Projection": projection,
                        "MethodLabel": method, "Labels": labels, "Report": report})
        write_png(base / str(folder) / image)
    pd.DataFrame(records).to_csv(base / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", index=False)
    return base


# -- VinDr-CXR ----------------------------------------------------------------------------------

def make_vindr(root: Path, vindr_28) -> Path:
    base = root / "vindr"
    train = [  # image, rad, positives
        ("aaa", "R1", ["Cardiomegaly", "Aortic enlargement"]), ("aaa", "R2", ["Cardiomegaly"]), ("aaa", "R3", ["No finding"]),
        ("bbb", "R1", ["No finding"]), ("bbb", "R4", ["No finding"]), ("bbb", "R5", ["Nodule/Mass"]),
        ("ccc", "R2", ["Pleural effusion"]), ("ccc", "R3", ["Pleural effusion"]), ("ccc", "R6", ["Pleural effusion"]),
    ]
    test = [("ttt", None, ["Pneumothorax", "Other diseases"])]
    for split, rows in (("train", train), ("test", test)):
        records = []
        for image, rad, positives in rows:
            record = {"image_id": image}
            if rad is not None:
                record["rad_ID"] = rad
            record.update({name: int(name in positives) for name in vindr_28})
            records.append(record)
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(records).to_csv(base / "annotations" / f"image_labels_{split}.csv", index=False)
        for image in sorted({row[0] for row in rows}):
            write_dicom(base / split / f"{image}.dicom", np.full((8, 8), 2000, np.uint16))
    boxes = pd.DataFrame([
        ("aaa", "R1", "Cardiomegaly", 1, 2, 5, 6), ("aaa", "R2", "Cardiomegaly", 1, 1, 6, 6),
        ("aaa", "R1", "Aortic enlargement", 3, 1, 4, 2), ("aaa", "R3", "No finding", NAN, NAN, NAN, NAN),
        ("bbb", "R5", "Nodule/Mass", 2, 2, 3, 3), ("ccc", "R2", "Pleural effusion", 0, 4, 8, 8),
    ], columns=["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"])
    boxes.to_csv(base / "annotations" / "annotations_train.csv", index=False)
    pd.DataFrame([("ttt", "R8", "Pneumothorax", 0, 0, 4, 8)],
                 columns=["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
                 ).to_csv(base / "annotations" / "annotations_test.csv", index=False)
    return base


# -- Open-i -------------------------------------------------------------------------------------

OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{uid}"/>
<MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">{indication}</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{mesh}</MeSH>
{images}
</eCitation>"""


def make_openi(root: Path) -> Path:
    base = root / "openi"
    reports = [
        (1, "Positive TB test", "The heart is normal. No effusion.", "Normal chest.", ["normal"], ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        (2, "Dyspnea", "Heart is enlarged. Small left pleural effusion.", "Cardiomegaly with effusion.",
         ["Cardiomegaly/mild", "Pleural Effusion/left/small", "Catheters, Indwelling"], ["CXR2_IM-0652-1001"]),
        (3, "Cough", "", "", ["No Indexing"], ["CXR3_IM-1384-1001"]),
    ]
    (base / "ecgen-radiology").mkdir(parents=True)
    for uid, indication, findings, impression, mesh, images in reports:
        xml = OPENI_XML.format(
            uid=uid, indication=indication, findings=findings, impression=impression,
            mesh="".join(f"<major>{term}</major>" for term in mesh),
            images="".join(f'<parentImage id="{image}"><figureId>F1</figureId></parentImage>' for image in images),
        )
        (base / "ecgen-radiology" / f"{uid}.xml").write_text(xml)
        for image in images:
            write_png(base / "NLMCXR_png" / f"{image}.png")
    return base


# -- NLM TB sets ----------------------------------------------------------------------------------

def make_shenzhen(root: Path) -> Path:
    base = root / "ChinaSet_AllFiles"
    readings = {"CHNCXR_0001_0": "male 45yrs\nnormal\n", "CHNCXR_0002_0": "Female 35yrs\nnormal\n",
                "CHNCXR_0327_1": "male 27yrs\nPTB in the right upper field\n", "CHNCXR_0328_1": "female 9month\nSTB\n"}
    for stem, text in readings.items():
        write_png(base / "CXR_png" / f"{stem}.png")
        (base / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (base / "ClinicalReadings" / f"{stem}.txt").write_text(text)
    return base


def make_montgomery(root: Path) -> Path:
    base = root / "NLM-MontgomeryCXRSet" / "MontgomerySet"
    readings = {"MCUCXR_0001_0": "Patient's Sex: M\nPatient's Age: 044Y\nnormal\n",
                "MCUCXR_0104_1": "Patient's Sex: F\nPatient's Age: 039Y\nRight upper lobe cavitary infiltrate.\n"}
    for stem, text in readings.items():
        write_png(base / "CXR_png" / f"{stem}.png")
        (base / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (base / "ClinicalReadings" / f"{stem}.txt").write_text(text)
    return root / "NLM-MontgomeryCXRSet"


# -- JSRT -----------------------------------------------------------------------------------------

def jsrt_raw(value: int) -> bytes:
    pixels = np.full((2048, 2048), value, dtype=">u2")
    pixels[:16, :16] = 0  # a corner at raw 0 = white after the film inversion
    return pixels.tobytes()


def make_jsrt(root: Path) -> Path:
    base = root / "jsrt"
    (base / "All247images").mkdir(parents=True)
    (base / "All247images" / "JPCLN001.IMG").write_bytes(jsrt_raw(4095))
    (base / "All247images" / "JPCNN001.IMG").write_bytes(jsrt_raw(1000))
    (base / "CLNDAT_EN.txt").write_text("JPCLN001.IMG\t3\t15\t53\tmale\t1634\t692\tmalignant\tl.upper lobe\tlung cancer\n")
    (base / "CNNDAT_EN.txt").write_text("JPCNN001.IMG\t\t\t47\tfemale\t\t\t\t\tnon-nodule\n")
    return base


# -- RSNA / SIIM / COVIDx / PLCO -----------------------------------------------------------------

def make_rsna(root: Path) -> Path:
    base = root / "rsna"
    base.mkdir(parents=True)
    pd.DataFrame([
        ("p-aaa", NAN, NAN, NAN, NAN, 0), ("p-bbb", 10, 20, 30, 40, 1), ("p-bbb", 50, 60, 5, 5, 1), ("p-ccc", NAN, NAN, NAN, NAN, 0),
    ], columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(base / "stage_2_train_labels.csv", index=False)
    pd.DataFrame([("p-aaa", "Normal"), ("p-bbb", "Lung Opacity"), ("p-ccc", "No Lung Opacity / Not Normal")],
                 columns=["patientId", "class"]).to_csv(base / "stage_2_detailed_class_info.csv", index=False)
    for patient in ("p-aaa", "p-bbb", "p-ccc"):
        write_dicom(base / "stage_2_train_images" / f"{patient}.dcm", np.full((8, 8), 1000, np.uint16))
    return base


def make_siim(root: Path) -> Path:
    """Three images on 4x4 masks: none, one region (relative RLE), two regions."""
    base = root / "siim"
    base.mkdir(parents=True)
    pd.DataFrame([("1.2.1", "-1"), ("1.2.2", "5 2"), ("1.2.3", "0 1"), ("1.2.3", "14 2")],
                 columns=["ImageId", " EncodedPixels"]).to_csv(base / "train-rle.csv", index=False)
    for image in ("1.2.1", "1.2.2", "1.2.3"):
        write_dicom(base / "dicom-images-train" / f"study{image}" / "series" / f"{image}.dcm", np.full((4, 4), 500, np.uint16))
    return base


def make_covidx(root: Path) -> Path:
    base = root / "covidx"
    lines = {"train": ["101 a.png positive bimcv", "102 b.png negative rsna"], "val": ["103 c.png negative rsna"],
             "test": ["104 d.jpg positive ricord"]}
    base.mkdir(parents=True)
    for split, entries in lines.items():
        (base / f"{split}.txt").write_text("\n".join(entries) + "\n")
        for entry in entries:
            name = entry.split()[1]
            (write_jpeg if name.endswith(".jpg") else write_png)(base / split / name)
    return base


def make_plco(root: Path) -> Path:
    base = root / "plco"
    rows = [("img_a", "P1", 3652.5, 1, 1, 365.25), ("img_b", "P1", 3652.5, 1, 1, 730.5), ("img_c", "P2", 7305.0, 0, 0, 0.0),
            ("img_d", "P3", 1826.25, 1, 0, 0.0), ("img_e", "P4", 5000.0, 0, 0, 0.0)]
    frame = pd.DataFrame(rows, columns=["image_file_name", "plco_id", "mortality_exitdays", "is_dead", "is_dead_cvd", "xry_days"])
    base.mkdir(parents=True)
    frame.to_csv(base / "plco_images.csv", index=False)
    for name, *_ in rows:
        write_png(base / f"{name}.png", bits=16, value=30000)
    return base


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found")

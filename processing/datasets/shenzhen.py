"""NLM tuberculosis sets (Jaeger et al., QIMS 2014): Shenzhen and Montgomery County.

Both share one format::

    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png         MontgomerySet/CXR_png/MCUCXR_0001_0.png
    ChinaSet_AllFiles/ClinicalReadings/CHNCXR_0001_0.txt MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt

The digit after the last ``_`` is the label (0 normal, 1 tuberculosis). The clinical reading holds
sex and age (Shenzhen: first line "male 45yrs"; Montgomery: "Patient's Sex: M" / "Patient's Age:
044Y") and then the radiologist's reading, which becomes ``report``. All images are PA. There is
no official split: each image is its own patient (no ids are released) and the split is
deterministic by ``fractions`` (default 70/10/20 as in CheXFound).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from datasets import Value

from ._io import build_dataset_dict, find_first, natural_key, read_text_lenient, require_root, split_by_patient

logger = logging.getLogger(__name__)

__all__ = ["load_shenzhen", "load_montgomery", "parse_clinical_reading"]

_LABEL_NAMES = ("Tuberculosis",)
_FILE_NAME = re.compile(r"^(?P<stem>[A-Za-z]+_\d+)_(?P<label>[01])$")
_SEX = re.compile(r"\b(female|male|f|m)\b", re.IGNORECASE)
_AGE = re.compile(r"(\d+)\s*(y|yr|yrs|year|years|m|mon|month|months|d|day|days)?\b", re.IGNORECASE)
_HEADER_LINE = re.compile(r"^\s*patient'?s?\s+(sex|age)\s*:\s*(.*)$", re.IGNORECASE)


def load_shenzhen(root, **kwargs):
    """Load the Shenzhen set (``ChinaSet_AllFiles``); arguments as :func:`load_nlm_tb`."""
    return load_nlm_tb(root, collection="shenzhen", folders=("ChinaSet_AllFiles",), **kwargs)


def load_montgomery(root, **kwargs):
    """Load the Montgomery County set (``MontgomerySet``); arguments as :func:`load_nlm_tb`."""
    return load_nlm_tb(root, collection="montgomery", folders=("MontgomerySet", "NLM-MontgomeryCXRSet/MontgomerySet"), **kwargs)


def load_nlm_tb(
    root,
    *,
    collection: str,
    folders: Sequence[str],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    frontal_only: bool = False,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Shared loader of the NLM TB sets: label from the file name, reading from ClinicalReadings/.

    Args:
        root: the set's folder (holding ``CXR_png/``) or its parent.
        fractions, seed: deterministic split (each image is its own patient).
        frontal_only: accepted for a uniform signature (all images are PA).
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    layout = "CXR_png/<NAME>_<0|1>.png and ClinicalReadings/<NAME>_<0|1>.txt"
    root = require_root(root, collection, layout)
    base = root if (root / "CXR_png").is_dir() else find_first(root, folders)
    if base is None or not (base / "CXR_png").is_dir():
        raise FileNotFoundError(f"load_{collection}: no CXR_png/ folder in {str(root)!r} (expected {layout}).")
    rows = []
    for image in sorted((base / "CXR_png").glob("*.png"), key=lambda p: natural_key(p.name)):
        match = _FILE_NAME.match(image.stem)
        if match is None:
            raise ValueError(f"load_{collection}: {image}: file name does not end in _0 or _1 (the label).")
        reading = base / "ClinicalReadings" / f"{image.stem}.txt"
        sex, age, text = parse_clinical_reading(read_text_lenient(reading)) if reading.is_file() else ("", np.nan, "")
        if not reading.is_file():
            logger.info("%s: no clinical reading %s; report left empty.", collection, reading)
        rows.append({
            "image_path": str(image),
            "labels": np.array([float(match.group("label"))], dtype=np.float32),
            "report": text,
            "view": "PA",
            "patient_id": match.group("stem"),
            "study_id": match.group("stem"),
            "age": age,
            "sex": sex,
        })
    if not rows:
        raise FileNotFoundError(f"load_{collection}: {base / 'CXR_png'} holds no PNG images.")
    table = pd.DataFrame(rows)
    return build_dataset_dict(
        split_by_patient(table, fractions, seed), collection=collection, label_names=_LABEL_NAMES,
        streaming=streaming, strict=strict, labels_only=labels_only, verify_images=verify_images, num_shards=num_shards,
        cache_dir=cache_dir, extra_features={"age": Value("float32"), "sex": Value("string")},
    )


def parse_clinical_reading(text: str) -> tuple[str, float, str]:
    """``(sex "M"/"F"/"", age in years or NaN, reading text)`` from an NLM clinical-reading file."""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    sex, age, body = "", float("nan"), []
    for index, line in enumerate(lines):
        header = _HEADER_LINE.match(line)
        if header:  # Montgomery: "Patient's Sex: M", "Patient's Age: 044Y"
            field, value = header.group(1).lower(), header.group(2)
            if field == "sex":
                sex = _sex(value)
            else:
                age = _age(value)
            continue
        if index == 0 and not sex and _SEX.search(line) and _AGE.search(line):  # Shenzhen: "male 45yrs"
            sex, age = _sex(line), _age(line)
            continue
        body.append(line)
    return sex, age, " ".join(body)


def _sex(text: str) -> str:
    match = _SEX.search(text)
    return match.group(1)[0].upper() if match else ""


def _age(text: str) -> float:
    match = _AGE.search(text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), (match.group(2) or "y").lower()
    if unit.startswith("m"):
        return value / 12.0
    if unit.startswith("d"):
        return value / 365.25
    return value

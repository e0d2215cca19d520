"""The label registry (processing/labels.py): the one source of label sets for loaders, evaluation and recipes."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from cxrfm.processing import labels
from cxrfm.processing.datasets import _common, chexpert, cxr_lt, mimic_cxr, nih, phantom, vindr
from cxrfm.processing.labels import (
    CHEXPERT_5,
    CHEXPERT_13,
    CHEXPERT_14,
    CXR_LT_40,
    LABEL_SETS,
    NIH_14,
    PADCHEST_61,
    VINDR_20,
    VINDR_28,
    get_label_set,
)


def test_sizes_orders_and_subsets():
    sizes = {name: len(names) for name, names in LABEL_SETS.items()}
    assert sizes == {"cxr-lt-40": 40, "chexpert-14": 14, "chexpert-13": 13, "chexpert-5": 5, "nih-14": 14,
                     "nih-15": 15, "vindr-28": 28, "vindr-20": 20, "padchest-61": 61}
    assert list(CXR_LT_40) == sorted(CXR_LT_40, key=str.lower)  # the challenge CSVs' alphabetical order
    assert CHEXPERT_14[0] == "No Finding" and CHEXPERT_13 == CHEXPERT_14[1:] and set(CHEXPERT_5) <= set(CHEXPERT_13)
    assert set(VINDR_20) <= set(VINDR_28) and NIH_14[2] == "Effusion"


def test_lookup_aliases_and_error():
    assert get_label_set("chexpert-5") is CHEXPERT_5
    assert get_label_set("CheXpert_13") is CHEXPERT_13
    assert get_label_set("openi-13") is CHEXPERT_13 and get_label_set("mimic-14") is CHEXPERT_14
    with pytest.raises(ValueError, match=r"Unknown label set 'chexpert-12'.*chexpert-13"):
        get_label_set("chexpert-12")
    with pytest.raises(TypeError):
        get_label_set(5)


def test_loaders_use_the_registry_objects():
    # Identity, not equality: a copy in a loader could drift from the registry without any test noticing.
    assert chexpert.CHEXPERT_LABEL_SETS == {"14": CHEXPERT_14, "13": CHEXPERT_13, "5": CHEXPERT_5}
    assert all(mimic_cxr.MIMIC_LABEL_SETS[k] is chexpert.CHEXPERT_LABEL_SETS[k] for k in ("14", "13", "5"))
    assert cxr_lt.CXR_LT_LABEL_SETS["40"] is CXR_LT_40 and phantom.CXR_LT_40 is CXR_LT_40
    assert nih.NIH_LABEL_SETS["14"] is NIH_14 and vindr.VINDR_LABEL_SETS["20"] is VINDR_20
    # The private module keeps the old names during the move, as the same objects.
    assert _common.CXR_LT_40 is CXR_LT_40 and _common.CHEXPERT_5 is CHEXPERT_5


def test_registry_module_is_light():
    # Evaluation code and model folders import it: it must not pull in datasets or pandas.
    source = Path(labels.__file__).read_text()
    imported = {node.names[0].name if isinstance(node, ast.Import) else node.module
                for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))}
    assert imported <= {"__future__", "collections.abc"}


def test_padchest_61_names_occur_in_the_real_padchest_csv():
    xrv = pytest.importorskip("torchxrayvision")
    csv = Path(xrv.__file__).parent / "data" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    cells = pd.read_csv(csv, usecols=["Labels"])["Labels"].dropna().unique()
    vocabulary = {name.strip().lower() for cell in cells for name in ast.literal_eval(cell)}
    assert [name for name in PADCHEST_61 if name.lower() not in vocabulary] == []

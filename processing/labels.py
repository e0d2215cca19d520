"""The one registry of chest X-ray label sets: loaders, evaluation and recipes import their names from here.

Each set is a tuple of finding names in the column order of its source (the order of a dataset's
``labels`` vector, of a model's outputs and of an evaluation table). Pure Python on purpose: it is
imported by evaluation code and model folders that must not pull in ``datasets`` or pandas.

:data:`LABEL_SETS` maps a registry name to a set; :func:`get_label_set` looks one up (with the
aliases of :data:`LABEL_SET_ALIASES`) and raises an error listing the known names otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CXR_LT_40",
    "CHEXPERT_14",
    "CHEXPERT_13",
    "CHEXPERT_5",
    "NIH_14",
    "NIH_15",
    "VINDR_28",
    "VINDR_20",
    "PADCHEST_61",
    "LABEL_SETS",
    "LABEL_SET_ALIASES",
    "get_label_set",
]

# CXR-LT 2024 task (40 findings), the official alphabetical column order of the challenge CSVs,
# which is also CheXFound's model/query order (reference/chexfound_dinov2.md §5).
CXR_LT_40: tuple[str, ...] = (
    "Adenopathy",
    "Atelectasis",
    "Azygos Lobe",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Clavicle Fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fissure",
    "Fracture",
    "Granuloma",
    "Hernia",
    "Hydropneumothorax",
    "Infarction",
    "Infiltration",
    "Kyphosis",
    "Lobar Atelectasis",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "Nodule",
    "Normal",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Pulmonary Embolism",
    "Pulmonary Hypertension",
    "Rib Fracture",
    "Round(ed) Atelectasis",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
    "Tuberculosis",
)

# CheXpert / MIMIC-CXR labeler observations in the column order of CheXpert's train.csv.
CHEXPERT_14: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# The 13 findings (CheXpert 14 without "No Finding").
CHEXPERT_13: tuple[str, ...] = CHEXPERT_14[1:]
# The CheXpert competition tasks (Irvin et al. 2019), alphabetical as in most papers' tables.
CHEXPERT_5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# ChestX-ray14 (Wang et al. 2017): the 14 findings in the usual order; the CSV spells them this way.
NIH_14: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NIH_15: tuple[str, ...] = (*NIH_14, "No Finding")

# VinDr-CXR 1.0.0 image-level labels, in the column order of image_labels_{train,test}.csv.
VINDR_28: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis",
    "Other diseases", "No finding",
)
# relaxed-CLIP Table 7: the 20 labels with more than 10 positives in the VinDr-CXR test set.
VINDR_20: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases",
)

# relaxed-CLIP Table 7: the 61 PadChest findings with more than 100 positives in the test set (title case as
# printed; load_padchest reads the CSV's lower-case names and matches them case-insensitively).
PADCHEST_61: tuple[str, ...] = (
    "Air Trapping", "Alveolar Pattern", "Aortic Atheromatosis", "Aortic Button Enlargement", "Aortic Elongation",
    "Apical Pleural Thickening", "Atelectasis", "Bronchiectasis", "Bronchovascular Markings", "Bullas",
    "Calcified Densities", "Calcified Granuloma", "Callus Rib Fracture", "Cardiomegaly", "Consolidation",
    "Copd Signs", "Costophrenic Angle Blunting", "Descendent Aortic Elongation", "Diaphragmatic Eventration",
    "Dual Chamber Device", "Emphysema", "Fibrotic Band", "Flattened Diaphragm", "Goiter", "Granuloma",
    "Gynecomastia", "Heart Insufficiency", "Hemidiaphragm Elevation", "Hiatal Hernia", "Hilar Congestion",
    "Hilar Enlargement", "Hyperinflated Lung", "Increased Density", "Infiltrates", "Interstitial Pattern",
    "Kyphosis", "Laminar Atelectasis", "Mammary Prosthesis", "Metal", "Nipple Shadow", "Nodule", "Osteopenia",
    "Osteosynthesis Material", "Pacemaker", "Pleural Effusion", "Pleural Thickening", "Pneumonia", "Pseudonodule",
    "Pulmonary Mass", "Sclerotic Bone Lesion", "Scoliosis", "Single Chamber Device", "Sternotomy",
    "Supra Aortic Elongation", "Suture Material", "Tracheal Shift", "Tuberculosis Sequelae",
    "Vascular Hilar Enlargement", "Vertebral Anterior Compression", "Vertebral Degenerative Changes", "Volume Loss",
)

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "cxr-lt-40": CXR_LT_40,
    "chexpert-14": CHEXPERT_14,
    "chexpert-13": CHEXPERT_13,
    "chexpert-5": CHEXPERT_5,
    "nih-14": NIH_14,
    "nih-15": NIH_15,
    "vindr-28": VINDR_28,
    "vindr-20": VINDR_20,
    "padchest-61": PADCHEST_61,
}
# Other names in use for the same sets (the zero-shot tables call Open-i's set "openi-13").
LABEL_SET_ALIASES: dict[str, str] = {
    "openi-13": "chexpert-13",
    "mimic-14": "chexpert-14",
    "mimic-13": "chexpert-13",
    "mimic-5": "chexpert-5",
}


def get_label_set(name: str) -> tuple[str, ...]:
    """The label set registered as ``name`` (case-insensitive; ``_`` and ``-`` are interchangeable)."""
    if not isinstance(name, str):
        raise TypeError(f"get_label_set: name must be a string, got {type(name).__name__}.")
    key = name.strip().lower().replace("_", "-")
    key = LABEL_SET_ALIASES.get(key, key)
    if key not in LABEL_SETS:
        known = sorted([*LABEL_SETS, *LABEL_SET_ALIASES])
        raise ValueError(f"Unknown label set {name!r}; known: {known}.")
    return LABEL_SETS[key]


def _check_unique(sets: dict[str, Sequence[str]]) -> None:
    # A duplicate name would make two outputs share one label: fail at import, not in a metric table.
    for set_name, names in sets.items():
        if len(set(names)) != len(names):
            raise ValueError(f"Label set {set_name!r} has duplicate names.")


_check_unique(LABEL_SETS)

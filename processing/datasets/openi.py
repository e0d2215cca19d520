"""Open-i / Indiana University chest X-rays (Demner-Fushman et al., JAMIA 2016): XML reports + PNGs.

Layout as distributed by NLM (``NLMCXR_reports.tgz`` and ``NLMCXR_png.tgz``)::

    <root>/ecgen-radiology/1.xml ... 3999.xml   (or <root>/NLMCXR_reports.tgz unpacked or not)
    <root>/NLMCXR_png/CXR1_1_IM-0001-3001.png   (or the PNGs in <root>/ or <root>/images/)

One row per ``parentImage`` of a report; ``findings`` and ``impression`` are the XML's own
``AbstractText`` FINDINGS / IMPRESSION fields and ``report`` joins the non-empty COMPARISON,
INDICATION, FINDINGS and IMPRESSION fields as ``LABEL: text`` lines. Each report is one patient
(``patient_id`` = the report's ``uId``), so the patient-level split keeps a patient's views
together.

Labels: the public release has no CheXpert-labeler output (relaxed-CLIP labelled the reports
themselves), so by default the 13 CheXpert findings are derived from the report's **MeSH major
terms** with the mapping ``MESH_TO_CHEXPERT`` (a finding is 1 when a mapped term is listed, 0
otherwise; reports indexed "No Indexing" get NaN). Pass ``labels_csv`` (a labeler output with a
``uid`` or ``image_id`` column and label columns by name) to use your own labels instead. Views are
not in the XML: pass ``view_csv`` (columns ``imageid`` plus ``View Position`` or ``view``) to fill
``view`` and to use ``frontal_only``.
"""

from __future__ import annotations

import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Value

from ..labels import CHEXPERT_13
from ._common import normalize_view
from ._io import (
    build_dataset_dict,
    find_first,
    frontal_mask,
    label_matrix_rows,
    match_label_columns,
    natural_key,
    read_table,
    require_root,
    split_by_patient,
)

__all__ = ["load_openi", "read_openi_reports", "MESH_TO_CHEXPERT"]

_SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
# MeSH major heading (text before the first "/") -> CheXpert finding; (heading, qualifier) pairs
# need both, e.g. "Mediastinum/enlarged".
MESH_TO_CHEXPERT: dict[str, tuple[str | tuple[str, str], ...]] = {
    "Enlarged Cardiomediastinum": (("mediastinum", "enlarged"), ("mediastinum", "widened"), ("cardiac shadow", "enlarged")),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("opacity", "airspace disease", "infiltrate"),
    "Lung Lesion": ("nodule", "mass"),
    "Edema": ("pulmonary edema", "pulmonary congestion"),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("pulmonary atelectasis",),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax", "hemopneumothorax"),
    "Pleural Effusion": ("pleural effusion", "hydropneumothorax", ("costophrenic angle", "blunted")),
    "Pleural Other": (("thickening", "pleura"), ("pleura", "thickening")),
    "Fracture": ("fractures, bone",),
    "Support Devices": ("catheters, indwelling", "implanted medical device", "surgical instruments", "tube, inserted",
                        "medical device", "stents", "pacemaker, artificial"),
}
_NOT_INDEXED = "no indexing"
_LAYOUT = "ecgen-radiology/*.xml (NLMCXR_reports.tgz) and NLMCXR_png/*.png."


def load_openi(
    root,
    *,
    reports_path=None,
    labels: Sequence[str] = CHEXPERT_13,
    labels_csv=None,
    view_csv=None,
    frontal_only: bool = False,
    min_text_length: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    streaming: bool = False,
    strict: bool = False,
    labels_only: bool = False,
    verify_images: bool = False,
    num_shards: int = 16,
    cache_dir: str | None = None,
):
    """Load Open-i into a patient-level ``train`` / ``validation`` / ``test`` split.

    Args:
        root: folder with the PNGs (``NLMCXR_png/``) and, by default, the reports.
        reports_path: ``ecgen-radiology`` folder or ``NLMCXR_reports.tgz`` (default: found in ``root``).
        labels: label names (from ``MESH_TO_CHEXPERT`` or the ``labels_csv`` columns).
        labels_csv: optional labeler CSV keyed by ``uid`` (report) or ``image_id``.
        view_csv: optional CSV with ``imageid`` and a view column.
        frontal_only: keep PA/AP images (needs ``view_csv``).
        min_text_length: drop images whose FINDINGS + IMPRESSION text is shorter (relaxed-CLIP: 10).
        fractions, seed: the patient-level split; ``(0, 0, 1)`` puts everything in ``test``.
        streaming, strict, labels_only, verify_images, num_shards, cache_dir: see ``build_dataset_dict``.
    """
    root = require_root(root, "openi", _LAYOUT)
    source = Path(reports_path) if reports_path is not None else find_first(root, ("ecgen-radiology", "NLMCXR_reports.tgz"))
    if source is None or not source.exists():
        raise FileNotFoundError(f"load_openi: no report XMLs: {str(source or root / 'ecgen-radiology')!r} not found.")
    reports = read_openi_reports(source)
    image_folder = find_first(root, ("NLMCXR_png", "images")) or root
    rows = [
        {**report, "image_id": image_id, "image_path": str(image_folder / f"{image_id}.png")}
        for report in reports for image_id in report["image_ids"]
    ]
    table = pd.DataFrame(rows, columns=["uid", "image_id", "image_path", "report", "findings", "impression", "mesh"])
    label_names = [str(name) for name in labels]
    table["labels"] = _labels(table, label_names, labels_csv)
    table["view"] = _views(table, view_csv)
    table["patient_id"] = table["uid"]
    table["study_id"] = table["uid"]
    if frontal_only:
        if view_csv is None:
            raise ValueError("load_openi: frontal_only=True needs view_csv (the XML reports carry no view).")
        table = table[frontal_mask(table["view"])]
    if min_text_length:
        text = (table["findings"] + " " + table["impression"]).str.strip()
        table = table[text.str.len() >= min_text_length]
    table = table.drop(columns=["mesh"])
    names = ("train", "validation", "test")
    tables = {name: part for name, part in split_by_patient(table, fractions, seed, names).items() if len(part) or name == "test"}
    return build_dataset_dict(
        tables, collection="openi", label_names=label_names, streaming=streaming, strict=strict, labels_only=labels_only,
        verify_images=verify_images, num_shards=num_shards, cache_dir=cache_dir,
        extra_features={"uid": Value("string"), "image_id": Value("string")},
    )


def _xml_files(source: Path) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for path in sorted(source.glob("*.xml"), key=lambda p: natural_key(p.name)):
            yield str(path), path.read_bytes()
        return
    # Read members in archive order, then sort: extracting in sorted order makes the gzip stream seek
    # backwards for many members (0.8-1.9 s instead of 0.4 s for the 3,955 reports of NLMCXR_reports.tgz).
    with tarfile.open(source, "r:*") as archive:
        files = [(member.name, archive.extractfile(member).read()) for member in archive
                 if member.isfile() and member.name.endswith(".xml")]
    for name, data in sorted(files, key=lambda item: natural_key(item[0])):
        yield f"{source}:{name}", data


def read_openi_reports(source: str | Path) -> list[dict]:
    """Parse every Open-i report XML (folder or tgz) into dicts.

    Each dict: ``uid`` (e.g. "CXR1"), ``image_ids`` (``parentImage`` ids), ``findings``,
    ``impression`` (the XML fields, "" when empty), ``report`` (labelled non-empty fields joined by
    newlines), ``mesh`` (lower-case MeSH major terms).
    """
    reports = []
    for name, data in _xml_files(Path(source)):
        try:
            xml_root = ET.fromstring(data)
        except ET.ParseError as error:
            raise ValueError(f"load_openi: {name}: not valid XML: {error}") from error
        uid_node = xml_root.find("uId")
        if uid_node is None or not uid_node.get("id"):
            raise ValueError(f"load_openi: {name}: no <uId id=...> element.")
        fields = {label: "" for label in _SECTIONS}
        for node in xml_root.iter("AbstractText"):
            label = (node.get("Label") or "").upper()
            if label in fields:
                fields[label] = " ".join((node.text or "").split())
        reports.append({
            "uid": uid_node.get("id"),
            "image_ids": [node.get("id") for node in xml_root.findall("parentImage") if node.get("id")],
            "findings": fields["FINDINGS"],
            "impression": fields["IMPRESSION"],
            "report": "\n".join(f"{label}: {text}" for label, text in fields.items() if text),
            "mesh": [(node.text or "").strip().lower() for node in xml_root.findall("MeSH/major")],
        })
    return reports


def _mesh_vector(terms: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
    if any(term.startswith(_NOT_INDEXED) for term in terms):
        return np.full(len(label_names), np.nan, dtype=np.float32)
    parsed = [[part.strip() for part in term.split("/")] for term in terms]
    vector = np.zeros(len(label_names), dtype=np.float32)
    for column, name in enumerate(label_names):
        for rule in MESH_TO_CHEXPERT[name]:
            head, qualifier = (rule, None) if isinstance(rule, str) else rule
            if any(parts[0] == head and (qualifier is None or qualifier in parts[1:]) for parts in parsed):
                vector[column] = 1.0
                break
    return vector


def _labels(table: pd.DataFrame, label_names: Sequence[str], labels_csv) -> list[np.ndarray]:
    if labels_csv is None:
        unknown = [name for name in label_names if name not in MESH_TO_CHEXPERT]
        if unknown:
            raise ValueError(f"load_openi: no MeSH mapping for {unknown}; known: {list(MESH_TO_CHEXPERT)} "
                             "(or pass labels_csv).")
        return [_mesh_vector(terms, label_names) for terms in table["mesh"]]
    frame = read_table(Path(labels_csv), "openi", what="Open-i labels CSV")
    key = next((column for column in ("image_id", "imageid", "uid") if column in frame.columns), None)
    if key is None:
        raise ValueError(f"load_openi: {labels_csv}: needs a 'uid' or 'image_id' column; found {list(frame.columns)}.")
    columns = match_label_columns(frame.columns, label_names, str(labels_csv))
    values = frame[[columns[name] for name in label_names]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    lookup = dict(zip(frame[key].astype(str), values))
    table_key = table["image_id"] if key in ("image_id", "imageid") else table["uid"]
    missing = np.full(len(label_names), np.nan, dtype=np.float32)
    return label_matrix_rows(np.stack([lookup.get(k, missing) for k in table_key])) if len(table) else []


def _views(table: pd.DataFrame, view_csv) -> pd.Series:
    if view_csv is None:
        return pd.Series([""] * len(table), index=table.index)
    frame = read_table(Path(view_csv), "openi", ["imageid"], what="Open-i view CSV", low_memory=False)
    column = next((c for c in ("View Position", "view", "tsne-view", "ViewPosition") if c in frame.columns), None)
    if column is None:
        raise ValueError(f"load_openi: {view_csv}: no view column ('View Position', 'view' or 'tsne-view').")
    lookup = dict(zip(frame["imageid"].astype(str), frame[column].map(normalize_view)))
    return table["image_id"].map(lambda image_id: lookup.get(image_id, "")).fillna("")

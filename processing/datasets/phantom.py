"""Synthetic chest X-ray phantom set: CXR-like images, 40 CXR-LT findings with masks, MIMIC-style reports.

The data for tests, the demo and benchmarks (no download, no files needed). ``load_phantom`` returns
a ``DatasetDict`` with the features of every cxrfm loader (:func:`cxr_features` over
:data:`CXR_LT_40`), plus ``boxes``/``box_labels``/``masks`` and, on request, survival columns; with
``streaming=True`` an ``IterableDatasetDict`` that renders the same rows on the fly (sharded, flat
memory). :func:`render_phantom_images` renders pixels for any finding matrix (used by tests that
compare an image with its finding-free twin); :func:`make_phantom_files` writes PNG files.

Images (vectorised numpy, 0 = black/air, 1 = white/bone as displayed): a torso in air, two lung fields
with vessel markings radiating from the hila, posterior ribs, clavicles, spine, mediastinum, aortic
knob, heart, hemidiaphragm domes and a gastric bubble, then per-image gain/gamma and Gaussian noise.
Lateral views ("LATERAL", about ``lateral_fraction`` of studies get one) use a lateral template: one
lung field, heart anterior, spine posterior, sternum; the frontal renderers are reused in that lung
field, so lateral findings are local changes but not anatomically faithful.

Every finding is a local change with a mask (``alpha > 0.5`` of its rendering) and a box:

=====================  ======================================================================
group                  findings (rendering)
=====================  ======================================================================
fluid / air in pleura  Pleural Effusion (white fills the costophrenic angle under a meniscus),
                       Pneumothorax (lucent lateral/apical rim without lung markings + pleural
                       line), Hydropneumothorax (lucent rim above a flat air-fluid level),
                       Pleural Thickening (dense rim along the lateral wall), Pleural Other
                       (calcified plaque on the lateral wall)
heart / mediastinum    Cardiomegaly (wider heart), Enlarged Cardiomediastinum (wider upper
                       mediastinum), Tortuous Aorta (descending-aorta bulge), Calcification of the
                       Aorta (bright arc on the knob), Pneumomediastinum (lucent stripe along the
                       left heart border), Pulmonary Hypertension (bulging main pulmonary artery),
                       Adenopathy (bilateral lobulated hilar masses), Hernia (retrocardiac gas
                       bubble with an air-fluid level)
airspace / interstitium Consolidation (dense lobar patch), Lung Opacity (moderate patch), Pneumonia
                       (patchy mottled patch), Infiltration (hazy streaky patch), Edema (bilateral
                       perihilar haze), Fibrosis (basal reticulation), Emphysema (apical bullae
                       without markings), Pulmonary Embolism (Westermark focal oligaemia: a darker
                       area without markings), Infarction (peripheral wedge at the base)
volume loss            Atelectasis (plate-like band), Lobar Atelectasis (right-upper-lobe triangle),
                       Round(ed) Atelectasis (pleural-based round opacity with a comet tail)
focal lesions          Nodule, Mass, Lung Lesion (irregular), Granuloma (small, very dense),
                       Tuberculosis (apical patch with a cavity)
lines in the lung      Fissure (minor fissure line), Azygos Lobe (curved apical fissure + teardrop)
bones                  Rib Fracture (gap in a lateral rib), Clavicle Fracture (gap in a clavicle),
                       Fracture (healing callus on a posterior rib), Kyphosis (rendered as a curved
                       spine contour: there is no sagittal geometry in a frontal phantom)
outside the lungs      Subcutaneous Emphysema (lucent streaks in the lateral soft tissue),
                       Pneumoperitoneum (lucent crescent under the right hemidiaphragm), Support
                       Devices (endotracheal tube, nasogastric tube or central line)
none                   Normal (set when no other finding is present; no rendering, no mask)
=====================  ======================================================================

Labels are drawn independently per study with the long-tailed prevalences of
:data:`PHANTOM_PREVALENCE` (roughly CXR-LT's head-to-tail shape; several classes below 1%). The
report states every present finding in FINDINGS, negates one to three absent ones ("No
pneumothorax."), and lists the present findings in IMPRESSION. Randomness comes only from ``seed``:
same seed and arguments -> identical bytes. A finding's geometry and the image noise are drawn per
image independently of which findings are present, so removing a finding changes only its region.
"""

from __future__ import annotations

import io
import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets import Image as HFImage
from PIL import Image as PILImage

from ..labels import CXR_LT_40
from ._common import SPLIT_NAMES, cxr_features, patient_level_split, positive_label_ids

logger = logging.getLogger(__name__)

__all__ = [
    "PHANTOM_PREVALENCE",
    "PHANTOM_SENTENCES",
    "PHANTOM_NEGATIONS",
    "PHANTOM_IMPRESSIONS",
    "SURVIVAL_LOG_HAZARD",
    "render_phantom_images",
    "load_phantom",
    "make_phantom_files",
]

_NAMES = CXR_LT_40
_INDEX = {name: index for index, name in enumerate(_NAMES)}

# Per-study prevalence (Bernoulli, independent). Head ~ CXR-LT's frequent classes, tail < 1%.
PHANTOM_PREVALENCE: dict[str, float] = {
    "Adenopathy": 0.012, "Atelectasis": 0.18, "Azygos Lobe": 0.002, "Calcification of the Aorta": 0.02,
    "Cardiomegaly": 0.18, "Clavicle Fracture": 0.003, "Consolidation": 0.05, "Edema": 0.12, "Emphysema": 0.02,
    "Enlarged Cardiomediastinum": 0.04, "Fibrosis": 0.006, "Fissure": 0.008, "Fracture": 0.025, "Granuloma": 0.012,
    "Hernia": 0.01, "Hydropneumothorax": 0.003, "Infarction": 0.002, "Infiltration": 0.015, "Kyphosis": 0.004,
    "Lobar Atelectasis": 0.002, "Lung Lesion": 0.01, "Lung Opacity": 0.22, "Mass": 0.015, "Nodule": 0.03,
    "Normal": 0.0, "Pleural Effusion": 0.2, "Pleural Other": 0.004, "Pleural Thickening": 0.012,
    "Pneumomediastinum": 0.003, "Pneumonia": 0.07, "Pneumoperitoneum": 0.003, "Pneumothorax": 0.04,
    "Pulmonary Embolism": 0.005, "Pulmonary Hypertension": 0.006, "Rib Fracture": 0.01,
    "Round(ed) Atelectasis": 0.002, "Subcutaneous Emphysema": 0.01, "Support Devices": 0.3,
    "Tortuous Aorta": 0.02, "Tuberculosis": 0.005,
}

# FINDINGS sentence per present finding; {side} is the patient's side ("right" = image left).
PHANTOM_SENTENCES: dict[str, str] = {
    "Adenopathy": "Lobulated bilateral hilar enlargement suggests adenopathy.",
    "Atelectasis": "Plate-like atelectasis is seen at the {side} lung base.",
    "Azygos Lobe": "A curvilinear fissure in the right apex represents an azygos lobe.",
    "Calcification of the Aorta": "There is calcification of the aortic knob.",
    "Cardiomegaly": "The heart is enlarged.",
    "Clavicle Fracture": "There is a fracture of the {side} clavicle.",
    "Consolidation": "There is dense consolidation in the {side} lower lung.",
    "Edema": "Bilateral perihilar haziness is consistent with pulmonary edema.",
    "Emphysema": "Lucent bullae in the {side} upper lung indicate emphysema.",
    "Enlarged Cardiomediastinum": "The upper mediastinum is widened.",
    "Fibrosis": "Basal reticular opacities suggest fibrosis.",
    "Fissure": "The minor fissure is thickened.",
    "Fracture": "A healing fracture of a {side} posterior rib is noted.",
    "Granuloma": "A small calcified granuloma is seen in the {side} lung.",
    "Hernia": "A retrocardiac air-fluid level indicates a hiatal hernia.",
    "Hydropneumothorax": "There is a {side} hydropneumothorax with an air-fluid level.",
    "Infarction": "A peripheral wedge-shaped opacity at the {side} base may represent infarction.",
    "Infiltration": "Hazy streaky infiltration is present in the {side} mid lung.",
    "Kyphosis": "There is exaggerated curvature of the thoracic spine (kyphosis).",
    "Lobar Atelectasis": "Collapse of the right upper lobe is present.",
    "Lung Lesion": "An irregular lesion is seen in the {side} lung.",
    "Lung Opacity": "There is an ill-defined opacity in the {side} lung.",
    "Mass": "A large mass is present in the {side} lung.",
    "Nodule": "A pulmonary nodule is noted in the {side} lung.",
    "Normal": "The lungs are clear.",
    "Pleural Effusion": "There is a {side} pleural effusion blunting the costophrenic angle.",
    "Pleural Other": "A calcified pleural plaque is seen along the {side} chest wall.",
    "Pleural Thickening": "Pleural thickening is present along the {side} lateral chest wall.",
    "Pneumomediastinum": "Lucency along the left heart border indicates pneumomediastinum.",
    "Pneumonia": "Patchy airspace disease in the {side} lower lung is concerning for pneumonia.",
    "Pneumoperitoneum": "Free air is present beneath the right hemidiaphragm.",
    "Pneumothorax": "There is a {side} pneumothorax.",
    "Pulmonary Embolism": "Focal oligemia in the {side} lung raises concern for pulmonary embolism.",
    "Pulmonary Hypertension": "An enlarged main pulmonary artery suggests pulmonary hypertension.",
    "Rib Fracture": "There is an acute fracture of a {side} lateral rib.",
    "Round(ed) Atelectasis": "A rounded opacity with a comet tail at the {side} base represents rounded atelectasis.",
    "Subcutaneous Emphysema": "Subcutaneous emphysema is seen along the {side} chest wall.",
    "Support Devices": "A support device is in place.",
    "Tortuous Aorta": "The descending aorta is tortuous.",
    "Tuberculosis": "A cavitary opacity in the {side} apex is suspicious for tuberculosis.",
}

# Negation sentences used for absent findings (only these findings are ever negated).
PHANTOM_NEGATIONS: dict[str, str] = {
    "Pneumothorax": "No pneumothorax.",
    "Pleural Effusion": "No pleural effusion.",
    "Consolidation": "No focal consolidation.",
    "Edema": "No pulmonary edema.",
    "Cardiomegaly": "The heart size is normal.",
    "Nodule": "No pulmonary nodules.",
    "Mass": "No mass.",
    "Rib Fracture": "No displaced rib fracture.",
    "Pneumomediastinum": "No pneumomediastinum.",
    "Pneumoperitoneum": "No free air below the diaphragm.",
    "Enlarged Cardiomediastinum": "The mediastinal contours are normal.",
    "Hydropneumothorax": "No hydropneumothorax.",
}

# IMPRESSION phrase per present finding; a normal study reads "No acute cardiopulmonary process."
PHANTOM_IMPRESSIONS: dict[str, str] = {name: f"{name.replace('Round(ed)', 'Rounded')}." for name in _NAMES}
PHANTOM_IMPRESSIONS["Normal"] = "No acute cardiopulmonary process."

# Log-hazard added by each present finding (opportunistic-risk tests); baseline hazard 0.05 / year.
SURVIVAL_LOG_HAZARD: dict[str, float] = {
    "Cardiomegaly": 1.0, "Pleural Effusion": 0.7, "Edema": 0.8, "Mass": 1.2, "Pulmonary Hypertension": 1.0,
    "Calcification of the Aorta": 0.6, "Emphysema": 0.6, "Fibrosis": 0.7, "Enlarged Cardiomediastinum": 0.5,
    "Tuberculosis": 0.5,
}
_BASELINE_HAZARD = 0.05
_FOLLOW_UP_YEARS = (2.0, 12.0)  # administrative censoring time ~ Uniform(2, 12) years

_N_FINDING_PARAMS = 8

# --------------------------------------------------------------------------------------------------
# Shapes: soft masks in [0, 1] on the unit square; u = x (image left -> right), v = y (top -> bottom).
# Parameters are (b, 1, 1) arrays; grids are (1, S, S); results (b, S, S). ``edge`` ~ one pixel.
# --------------------------------------------------------------------------------------------------


def _distance(dx, dy):
    return np.sqrt(dx * dx + dy * dy)  # 10x faster than np.hypot on float32 arrays


def _pow6(x):
    x2 = x * x
    return x2 * x2 * x2  # 2x faster than x ** 6


def _ellipse(u, v, cx, cy, rx, ry, edge):
    radius = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return np.clip(0.5 - (radius - 1.0) * np.minimum(rx, ry) / edge, 0.0, 1.0)


def _segment(u, v, x0, y0, x1, y1, width, edge):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    distance = _distance(u - (x0 + t * dx), v - (y0 + t * dy))
    return np.clip(0.5 - (distance - width / 2) / edge, 0.0, 1.0)


def _polyline(u, v, points, width, edge):
    """points: list of (x, y) pairs of (b, 1, 1) arrays."""
    shape = np.broadcast_shapes(u.shape, v.shape, *(np.shape(c) for point in points for c in point))
    alpha = np.zeros(shape, dtype=np.float32)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        alpha = np.maximum(alpha, _segment(u, v, x0, y0, x1, y1, width, edge))
    return alpha


def _triangle(u, v, p0, p1, p2, edge):
    def side(a, b, c):  # signed distance of (u, v) to line a->b, positive on c's side
        nx, ny = -(b[1] - a[1]), b[0] - a[0]
        norm = _distance(nx, ny) + 1e-12
        sign = np.sign((c[0] - a[0]) * nx + (c[1] - a[1]) * ny)
        return sign * ((u - a[0]) * nx + (v - a[1]) * ny) / norm

    inside = np.minimum(np.minimum(side(p0, p1, p2), side(p1, p2, p0)), side(p2, p0, p1))
    return np.clip(0.5 + inside / edge, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------------

_ANATOMY_KEYS = ("dx", "dy", "scale", "heart", "gain", "gamma", "phase0", "phase1", "dome", "rib", "noise")


def _draw_image_params(seed: int, image_id: int, image_size: int):
    """Per-image random draws, independent of the findings: anatomy (11,), findings (40, P), noise (S, S)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED, int(image_id)]))
    anatomy = rng.random(len(_ANATOMY_KEYS))
    findings = rng.random((len(_NAMES), _N_FINDING_PARAMS))
    noise = rng.standard_normal((image_size, image_size), dtype=np.float32)
    return anatomy, findings, noise


class _Scene:
    """Anatomy of a batch of images as (b, 1, 1) arrays plus the (1, S, S) grid; indexable."""

    def __init__(self, u, v, edge, fields: dict[str, np.ndarray]):
        self.u, self.v, self.edge = u, v, edge
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def take(self, index: np.ndarray) -> _Scene:
        return _Scene(self.u, self.v, self.edge, {k: a[index] for k, a in self.fields.items()})

    # Regions used by several renderers ------------------------------------------------------------
    def lung(self, side):
        """Lung field of ``side`` (b, 1, 1) int: 0 = image left (patient right), 1 = image right."""
        cx = np.where(side == 0, self.lung_cx0, self.lung_cx1)
        dome = np.where(side == 0, self.dome0, self.dome1)
        ellipse = _ellipse(self.u, self.v, cx, self.lung_cy, self.lung_rx, self.lung_ry, self.edge)
        return ellipse * np.clip(0.5 + (dome - self.v) / self.edge, 0.0, 1.0)

    def lung_radius(self, side):
        cx = np.where(side == 0, self.lung_cx0, self.lung_cx1)
        return np.sqrt(((self.u - cx) / self.lung_rx) ** 2 + ((self.v - self.lung_cy) / self.lung_ry) ** 2)

    def side_geometry(self, side):
        """cx, dome, lateral direction (-1 = towards image left) and hilum x of ``side``."""
        cx = np.where(side == 0, self.lung_cx0, self.lung_cx1)
        dome = np.where(side == 0, self.dome0, self.dome1)
        lateral = np.where(side == 0, -1.0, 1.0) * self.frontal + (1 - self.frontal) * 1.0
        hilum_x = cx - lateral * 0.45 * self.lung_rx
        return cx, dome, lateral, hilum_x


def _make_scene(anatomy: np.ndarray, lateral: np.ndarray, image_size: int) -> _Scene:
    """anatomy: (B, 11) uniform draws; lateral: (B,) bool."""
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    u, v = coords[None, None, :], coords[None, :, None]
    a = {key: anatomy[:, i].astype(np.float32)[:, None, None] for i, key in enumerate(_ANATOMY_KEYS)}
    frontal = (~lateral).astype(np.float32)[:, None, None]
    dx, dy = (a["dx"] - 0.5) * 0.04, (a["dy"] - 0.5) * 0.04
    scale = 0.95 + 0.1 * a["scale"]
    fields = {
        "frontal": frontal,
        "lung_cx0": np.where(frontal > 0, 0.31 + dx, 0.53 + dx),
        "lung_cx1": np.where(frontal > 0, 0.69 + dx, 0.53 + dx),
        "lung_cy": 0.45 + dy,
        "lung_rx": np.where(frontal > 0, 0.15 * scale, 0.27 * scale),
        "lung_ry": 0.31 * scale,
        "dome0": 0.70 + dy + 0.03 * (a["dome"] - 0.5),
        "dome1": np.where(frontal > 0, 0.73 + dy, 0.70 + dy) + 0.03 * (a["dome"] - 0.5),
        "heart_cx": np.where(frontal > 0, 0.545 + dx, 0.36 + dx),
        "heart_cy": 0.62 + dy,
        "heart_rx": np.where(frontal > 0, 0.12, 0.14) * (0.95 + 0.1 * a["heart"]),
        "heart_ry": 0.10 * (0.95 + 0.1 * a["heart"]),
        "spine_x": np.where(frontal > 0, 0.5 + dx, 0.80 + dx),
        "mediastinum_x": np.where(frontal > 0, 0.5 + dx, 0.45 + dx),
        "rib_offset": 0.02 * a["rib"] + dy,
        "gain": 0.9 + 0.2 * a["gain"],
        "gamma": 0.85 + 0.3 * a["gamma"],
        "phase0": 2 * math.pi * a["phase0"],
        "phase1": 2 * math.pi * a["phase1"],
        "noise_std": 0.01 + 0.015 * a["noise"],
    }
    return _Scene(u, v, 1.0 / image_size, fields)


def _lerp(image, target, alpha):
    return image + alpha * (target - image)


def _render_anatomy(scene: _Scene, image_size: int) -> np.ndarray:
    s, u, v, edge = scene, scene.u, scene.v, scene.edge
    frontal = s.frontal
    image = np.full((s.frontal.shape[0], image_size, image_size), 0.04, dtype=np.float32)
    torso = _ellipse(u, v, 0.5, 0.56, 0.47, 0.62, edge)
    image = _lerp(image, 0.6, torso)
    # Lungs with vessel markings that radiate from each hilum and fade to the periphery.
    for side, phase in ((0, s.phase0), (1, s.phase1)):
        side_array = np.full_like(s.lung_cx0, side, dtype=np.int64)
        lung = s.lung(side_array)
        hilum_x = s.side_geometry(side_array)[3]
        angle = np.arctan2(v - s.lung_cy, u - hilum_x)
        reach = _distance(u - hilum_x, v - s.lung_cy)
        markings = 0.09 * _pow6(0.5 + 0.5 * np.cos(11 * angle + phase)) * np.exp(-reach / 0.22)
        image = _lerp(image, 0.2 + markings, lung)
    # Posterior ribs: periodic bright arcs over the thorax, curving down laterally.
    rib_phase = (v - 0.09 * ((u - 0.5) / 0.4) ** 2 - 0.1 - s.rib_offset) / 0.065
    ribs = _pow6(np.maximum(np.cos(2 * math.pi * rib_phase), 0.0))
    thorax = torso * np.clip((0.74 - v) / 0.03, 0.0, 1.0) * np.clip((v - 0.1) / 0.03, 0.0, 1.0)
    image = image + np.where(frontal > 0, 0.09, 0.04) * ribs * thorax
    # Spine (both views), mediastinum + aortic knob (frontal), sternum (lateral), clavicles (frontal).
    spine = _segment(u, v, s.spine_x, 0.05, s.spine_x, 0.95, 0.07, edge)
    image = image + 0.08 * spine * torso
    mediastinum = _segment(u, v, s.mediastinum_x, 0.06, s.mediastinum_x, s.heart_cy, 0.12, edge)
    image = _lerp(image, 0.64, mediastinum * frontal)
    knob = _ellipse(u, v, s.mediastinum_x + 0.06, 0.28, 0.035, 0.03, edge)
    image = _lerp(image, 0.66, knob * frontal)
    sternum = _segment(u, v, 0.14, 0.2, 0.16, 0.62, 0.03, edge)
    image = image + 0.1 * sternum * (1 - frontal)
    heart = _ellipse(u, v, s.heart_cx, s.heart_cy, s.heart_rx, s.heart_ry, edge)
    image = _lerp(image, 0.68, heart)
    width = max(0.012, 1.6 / image_size)
    for sign in (-1.0, 1.0):
        clavicle = _segment(u, v, 0.5 + sign * 0.04, 0.15, 0.5 + sign * 0.3, 0.1, width, edge)
        image = image + 0.12 * clavicle * frontal
    # Abdomen below the domes is soft tissue already; the gastric bubble sits under the left dome.
    bubble = _ellipse(u, v, 0.66, s.dome1 + 0.06, 0.045, 0.025, edge)
    image = _lerp(image, 0.3, bubble * frontal)
    return image


# --------------------------------------------------------------------------------------------------
# Findings: each renderer returns layers [(alpha (b,S,S), target value or None, additive amount)].
# "set" layers blend towards ``target``; "add" layers add ``amount * alpha``.
# p: (b, P) uniform draws for this finding; sides are drawn from p[:, 0].
# --------------------------------------------------------------------------------------------------

# (alpha, target value or None, additive amount)
Layer = tuple[np.ndarray, "float | np.ndarray | None", float]


def _col(p, j):
    return p[:, j].astype(np.float32)[:, None, None]


def _side(p):
    return (p[:, 0] >= 0.5).astype(np.int64)[:, None, None]


def _min_size(size, image_size, pixels=2.0):
    return np.maximum(size, pixels / image_size)


def _patch(s, p, cy_rel, rx_rel, ry_rel, n):
    side = _side(p)
    cx, dome, lateral, _ = s.side_geometry(side)
    centre_x = cx + lateral * (_col(p, 1) - 0.5) * 0.5 * s.lung_rx
    centre_y = s.lung_cy + (cy_rel + 0.15 * (_col(p, 2) - 0.5)) * s.lung_ry
    rx = _min_size(rx_rel * s.lung_rx * (0.8 + 0.4 * _col(p, 3)), n, 3)
    ry = _min_size(ry_rel * s.lung_ry * (0.8 + 0.4 * _col(p, 4)), n, 3)
    return _ellipse(s.u, s.v, centre_x, centre_y, rx, ry, s.edge) * s.lung(side), centre_x, centre_y


def _blob(s, p, n, radius, cy_range=(-0.5, 0.4)):
    side = _side(p)
    cx, _, lateral, _ = s.side_geometry(side)
    centre_x = cx + lateral * (_col(p, 1) - 0.3) * 0.8 * s.lung_rx
    centre_y = s.lung_cy + (cy_range[0] + (cy_range[1] - cy_range[0]) * _col(p, 2)) * s.lung_ry
    r = _min_size(radius * (0.8 + 0.4 * _col(p, 3)), n, 1.8)
    return _ellipse(s.u, s.v, centre_x, centre_y, r, r, s.edge), centre_x, centre_y, r


def _render_finding(name: str, s: _Scene, p: np.ndarray, n: int) -> list[Layer]:
    u, v, e = s.u, s.v, s.edge
    side = _side(p)
    cx, dome, lateral, hilum_x = s.side_geometry(side)
    line = max(0.008, 1.5 / n)
    if name == "Adenopathy":
        alpha = 0
        for sd in (0, 1):
            sd_array = np.full_like(side, sd)
            _, _, lat, hx = s.side_geometry(sd_array)
            for k, dy in enumerate((-0.05, 0.02)):
                r = _min_size(0.03 + 0.01 * _col(p, 1 + k), n, 2)
                alpha = np.maximum(alpha, _ellipse(u, v, hx + lat * 0.02, s.lung_cy + dy, r, r * 1.2, e))
        return [(alpha, 0.62, 0.0)]
    if name == "Atelectasis":
        cy = s.lung_cy + 0.55 * s.lung_ry + 0.05 * _col(p, 2)
        band = _ellipse(u, v, cx, cy, 0.65 * s.lung_rx, _min_size(0.012, n, 1.5), e)
        return [(band * s.lung(side), 0.58, 0.0)]
    if name == "Azygos Lobe":
        x0 = s.lung_cx0 + 0.5 * s.lung_rx
        points = [(x0, s.lung_cy - 0.9 * s.lung_ry), (x0 + 0.25 * s.lung_rx, s.lung_cy - 0.6 * s.lung_ry),
                  (x0 + 0.35 * s.lung_rx, s.lung_cy - 0.35 * s.lung_ry)]
        curve = _polyline(u, v, points, line, e)
        drop = _ellipse(u, v, points[-1][0], points[-1][1], _min_size(0.012, n, 1.5), _min_size(0.02, n, 2), e)
        return [(np.maximum(curve, drop), 0.62, 0.0)]
    if name == "Calcification of the Aorta":
        knob_x, knob_y = s.mediastinum_x + 0.06, 0.28
        radius = _distance((u - knob_x) / 0.035, (v - knob_y) / 0.03)
        arc = np.clip(1.0 - np.abs(radius - 1.0) * 0.03 / line, 0.0, 1.0) * (v < knob_y + 0.01)
        return [(arc.astype(np.float32), 0.95, 0.0)]
    if name == "Cardiomegaly":
        grow = 1.35 + 0.15 * _col(p, 1)
        big = _ellipse(u, v, s.heart_cx + 0.02, s.heart_cy + 0.01, s.heart_rx * grow, s.heart_ry * 1.15, e)
        normal = _ellipse(u, v, s.heart_cx, s.heart_cy, s.heart_rx, s.heart_ry, e)
        return [(np.clip(big - normal, 0.0, 1.0), 0.68, 0.0)]
    if name == "Clavicle Fracture":
        sign = np.where(side == 0, -1.0, 1.0)
        t = 0.45 + 0.2 * _col(p, 1)
        x, y = 0.5 + sign * (0.04 + 0.26 * t), 0.15 - 0.05 * t
        gap = _ellipse(u, v, x, y, _min_size(0.008, n, 1.0), _min_size(0.03, n, 3), e)
        return [(gap, None, -0.2)]
    if name == "Consolidation":
        alpha, _, _ = _patch(s, p, 0.35, 0.6, 0.3, n)
        return [(alpha, 0.62, 0.0)]
    if name == "Edema":
        alpha = 0
        for sd in (0, 1):
            sd_array = np.full_like(side, sd)
            _, _, lat, hx = s.side_geometry(sd_array)
            haze = _ellipse(u, v, hx + lat * 0.05, s.lung_cy, 0.1, 0.16, 4 * e)
            alpha = np.maximum(alpha, haze * s.lung(sd_array))
        return [(alpha * 0.75, 0.52, 0.0)]
    if name == "Emphysema":
        alpha = 0
        for k in range(2):
            r = _min_size(0.035 + 0.02 * _col(p, 1 + k), n, 2.5)
            bx = cx + lateral * (0.2 + 0.3 * k) * s.lung_rx
            by = s.lung_cy - (0.55 - 0.2 * k) * s.lung_ry
            alpha = np.maximum(alpha, _ellipse(u, v, bx, by, r, r, e))
        return [(alpha * s.lung(side), 0.06, 0.0)]
    if name == "Enlarged Cardiomediastinum":
        wide = _segment(u, v, s.mediastinum_x, 0.1, s.mediastinum_x, 0.5, 0.22 + 0.04 * _col(p, 1), e)
        normal = _segment(u, v, s.mediastinum_x, 0.06, s.mediastinum_x, s.heart_cy, 0.12, e)
        return [(np.clip(wide - normal, 0.0, 1.0), 0.64, 0.0)]
    if name == "Fibrosis":
        freq = min(18.0, n / 5.0)
        net = (np.abs(np.cos(math.pi * freq * u)) ** 8 + np.abs(np.cos(math.pi * freq * v)) ** 8).clip(0, 1)
        alpha = 0
        for sd in (0, 1):
            sd_array = np.full_like(side, sd)
            alpha = np.maximum(alpha, s.lung(sd_array) * np.clip((v - (s.lung_cy + 0.1 * s.lung_ry)) / 0.02, 0, 1))
        return [(alpha, None, 0.0), (alpha * net, None, 0.25)]
    if name == "Fissure":
        y = s.lung_cy + 0.05 + 0.04 * _col(p, 1)
        fissure = _segment(u, v, s.lung_cx0 - 0.85 * s.lung_rx, y, s.lung_cx0 + 0.5 * s.lung_rx, y + 0.01, line, e)
        return [(fissure, 0.6, 0.0)]
    if name == "Fracture":
        sign = np.where(side == 0, -1.0, 1.0)
        x = s.spine_x + sign * (0.09 + 0.03 * _col(p, 1))
        rib_row = np.round(2 + 4 * _col(p, 2))
        y = 0.1 + s.rib_offset + 0.065 * rib_row + 0.09 * ((x - 0.5) / 0.4) ** 2
        callus = _ellipse(u, v, x, y, _min_size(0.03, n, 2.5), _min_size(0.018, n, 2), e)
        return [(callus, 0.9, 0.0)]
    if name == "Granuloma":
        alpha, _, _, _ = _blob(s, p, n, 0.014)
        return [(alpha, 0.95, 0.0)]
    if name == "Hernia":
        r = _min_size(0.045 + 0.01 * _col(p, 1), n, 3)
        bx, by = s.heart_cx - 0.01, s.heart_cy + 0.02
        bubble = _ellipse(u, v, bx, by, r * 1.2, r, e)
        return [(bubble, np.where(v < by, 0.12, 0.45).astype(np.float32), 0.0)]
    if name == "Hydropneumothorax":
        lung = s.lung(side)
        level = s.lung_cy + (0.2 + 0.2 * _col(p, 1)) * s.lung_ry
        rim = np.clip((s.lung_radius(side) - 0.6) / 0.05, 0.0, 1.0)
        fluid = lung * np.clip(0.5 + (v - level) / e, 0.0, 1.0)
        air = lung * rim * np.clip(0.5 - (v - level) / e, 0.0, 1.0)
        return [(np.maximum(fluid, air), np.where(v >= level, 0.62, 0.04).astype(np.float32), 0.0)]
    if name == "Infarction":
        base_y = dome - 0.1
        half_width = s.lung_rx * np.sqrt(np.clip(1 - ((base_y - s.lung_cy) / s.lung_ry) ** 2, 0.05, 1.0))
        wall_x = cx + lateral * half_width  # wedge base on the pleura, apex towards the hilum
        p0, p1 = (wall_x + lateral * 0.02, base_y - 0.07), (wall_x + lateral * 0.02, base_y + 0.07)
        p2 = (wall_x - lateral * (0.08 + 0.04 * _col(p, 1)), base_y)
        return [(_triangle(u, v, p0, p1, p2, e) * s.lung(side), 0.58, 0.0)]
    if name == "Infiltration":
        alpha, _, _ = _patch(s, p, 0.0, 0.55, 0.25, n)
        streaks = 0.55 + 0.45 * np.cos(2 * math.pi * min(10.0, n / 6.0) * (u + 0.5 * v))
        return [(alpha * streaks, 0.5, 0.0)]
    if name == "Kyphosis":
        bend = 0.04 + 0.02 * _col(p, 1)
        points = [(s.spine_x + bend * math.sin(math.pi * t), 0.08 + 0.8 * t) for t in np.linspace(0, 1, 9)]
        curve = _polyline(u, v, points, 0.035, e)
        return [(curve, 0.85, 0.0)]
    if name == "Lobar Atelectasis":
        top = (s.mediastinum_x - 0.06, s.lung_cy - 0.9 * s.lung_ry)
        hilum = (s.lung_cx0 + 0.55 * s.lung_rx, s.lung_cy - 0.05)
        lateral_pt = (s.lung_cx0 - 0.7 * s.lung_rx, s.lung_cy - (0.25 + 0.1 * _col(p, 1)) * s.lung_ry)
        wedge = _triangle(u, v, top, hilum, lateral_pt, e) * s.lung(np.zeros_like(side))
        return [(wedge, 0.6, 0.0)]
    if name == "Lung Lesion":
        alpha, x, y, r = _blob(s, p, n, 0.035)
        for k in range(2):
            dx, dy = (_col(p, 4 + 2 * k) - 0.5) * 2 * r, (_col(p, 5 + 2 * k) - 0.5) * 2 * r
            alpha = np.maximum(alpha, _ellipse(u, v, x + dx, y + dy, 0.7 * r, 0.6 * r, e))
        return [(alpha * s.lung(side), 0.6, 0.0)]
    if name == "Lung Opacity":
        alpha, _, _ = _patch(s, p, 0.1, 0.5, 0.25, n)
        return [(alpha, 0.45, 0.0)]
    if name == "Mass":
        alpha, _, _, _ = _blob(s, p, n, 0.065, cy_range=(-0.3, 0.2))
        return [(alpha, 0.66, 0.0)]
    if name == "Nodule":
        alpha, _, _, _ = _blob(s, p, n, 0.025)
        return [(alpha, 0.62, 0.0)]
    if name == "Pleural Effusion":
        t = np.clip((u - cx) * lateral / s.lung_rx, -1.0, 1.0)
        height = (0.08 + 0.1 * _col(p, 1)) * (0.35 + 0.65 * (t + 1) / 2)
        fluid = s.lung(side) * np.clip(0.5 + (v - (dome - height)) / e, 0.0, 1.0)
        return [(fluid, 0.62, 0.0)]
    if name == "Pleural Other":
        y = s.lung_cy + (0.1 * _col(p, 1) - 0.05) * s.lung_ry
        x = cx + lateral * 0.95 * s.lung_rx
        plaque = _ellipse(u, v, x, y, _min_size(0.01, n, 1.5), _min_size(0.05, n, 3), e)
        return [(plaque, 0.95, 0.0)]
    if name == "Pleural Thickening":
        rim = np.clip((s.lung_radius(side) - (0.86 - 0.04 * _col(p, 1))) / 0.03, 0.0, 1.0)
        lateral_half = np.clip((u - cx) * lateral / 0.02, 0.0, 1.0)
        return [(rim * lateral_half * s.lung(side), 0.58, 0.0)]
    if name == "Pneumomediastinum":
        radius = np.sqrt(((u - s.heart_cx) / s.heart_rx) ** 2 + ((v - s.heart_cy) / s.heart_ry) ** 2)
        thickness = max(0.1, 1.5 / (n * 0.1))
        stripe = np.clip(1.0 - np.abs(radius - 1.0 - thickness / 2) / (thickness / 2), 0.0, 1.0)
        stripe = stripe * (u > s.heart_cx) * (v < s.heart_cy + 0.02)
        return [(stripe.astype(np.float32), 0.05, 0.0)]
    if name == "Pneumonia":
        alpha, x, y = _patch(s, p, 0.35, 0.55, 0.3, n)
        frequency = 2 * math.pi * min(8.0, n / 8.0)
        mottle = 0.6 + 0.4 * np.cos(frequency * (u - x)) * np.cos(frequency * (v - y))
        return [(alpha * mottle, 0.58, 0.0)]
    if name == "Pneumoperitoneum":
        t = (u - s.lung_cx0) / s.lung_rx
        crescent_top = s.dome0 + 0.005
        thickness = _min_size(0.02, n, 2)
        below_dome = np.clip(0.5 + (v - crescent_top) / e, 0, 1)
        above_liver = np.clip(0.5 - (v - crescent_top - thickness * (1 - t**2)) / e, 0, 1)
        crescent = below_dome * above_liver * (np.abs(t) < 0.8)
        return [(crescent.astype(np.float32), 0.05, 0.0)]
    if name == "Pneumothorax":
        lung = s.lung(side)
        inner = 0.72 + 0.1 * _col(p, 1)
        radius = s.lung_radius(side)
        upper_lateral = np.clip(((u - cx) * lateral + (s.lung_cy - v)) / 0.02, 0.0, 1.0)
        rim = np.clip((radius - inner) / 0.03, 0.0, 1.0) * lung * upper_lateral
        return [(rim, 0.04, 0.0)]
    if name == "Pulmonary Embolism":
        alpha, _, _ = _patch(s, p, -0.1, 0.45, 0.22, n)
        return [(alpha, 0.12, 0.0)]
    if name == "Pulmonary Hypertension":
        r = _min_size(0.04, n, 2.5)
        artery = _ellipse(u, v, s.mediastinum_x + 0.075 + 0.01 * _col(p, 1), s.heart_cy - 0.15, r, r * 1.2, e)
        return [(artery, 0.68, 0.0)]
    if name == "Rib Fracture":
        x = cx + lateral * (0.55 + 0.2 * _col(p, 1)) * s.lung_rx
        rib_row = np.round(2 + 5 * _col(p, 2))
        y = 0.1 + s.rib_offset + 0.065 * rib_row + 0.09 * ((x - 0.5) / 0.4) ** 2
        gap = _ellipse(u, v, x, y, _min_size(0.008, n, 1.0), _min_size(0.03, n, 3), e)
        return [(gap, None, -0.2)]
    if name == "Round(ed) Atelectasis":
        r = _min_size(0.035, n, 2.5)
        x, y = cx + lateral * 0.7 * s.lung_rx, dome - 0.08
        ball = _ellipse(u, v, x, y, r, r, e)
        tail = _segment(u, v, x - lateral * r, y, hilum_x, s.lung_cy + 0.05, line, e)
        return [(np.maximum(ball, tail) * s.lung(side), 0.62, 0.0)]
    if name == "Subcutaneous Emphysema":
        wall_x = cx + lateral * (s.lung_rx + 0.02)
        soft_tissue = _ellipse(u, v, 0.5, 0.56, 0.45, 0.6, e)  # inside the torso, outside the ribs' lung
        band = np.clip(((u - wall_x) * lateral) / e, 0.0, 1.0) * soft_tissue * (v > 0.2) * (v < 0.65)
        streaks = np.cos(2 * math.pi * min(10.0, n / 6.0) * (v + 0.4 * u)) > 0.3
        return [((band * streaks).astype(np.float32), 0.08, 0.0)]
    if name == "Support Devices":
        kind = _col(p, 1)
        jitter = 0.02 * (_col(p, 2) - 0.5)
        ett = [(s.mediastinum_x + jitter, 0.0), (s.mediastinum_x + jitter, 0.33)]
        ng = [(s.mediastinum_x + jitter + 0.01, 0.0), (s.mediastinum_x + 0.01, 0.55), (0.66, s.dome1 + 0.07)]
        central = [(0.78, 0.12), (0.6, 0.2), (s.mediastinum_x + 0.02, 0.45)]
        width = max(0.01, 1.8 / n)
        alpha = np.where(kind < 0.4, _polyline(u, v, ett, width, e),
                         np.where(kind < 0.7, _polyline(u, v, ng, width, e), _polyline(u, v, central, width, e)))
        return [(alpha, 0.97, 0.0)]
    if name == "Tortuous Aorta":
        bulge = _ellipse(u, v, s.mediastinum_x + 0.085 + 0.01 * _col(p, 1), 0.4, 0.045, 0.09, e)
        return [(bulge, 0.66, 0.0)]
    if name == "Tuberculosis":
        x, y = cx + lateral * 0.1 * s.lung_rx, s.lung_cy - 0.65 * s.lung_ry
        patch = _ellipse(u, v, x, y, 0.5 * s.lung_rx, 0.22 * s.lung_ry, e)
        r = _min_size(0.022, n, 2)
        cavity = _ellipse(u, v, x, y, r, r, e)
        return [(patch * s.lung(side), 0.58, 0.0), (cavity, 0.1, 0.0)]
    raise ValueError(f"No phantom renderer for finding {name!r}.")


def render_phantom_images(
    present: np.ndarray,
    *,
    image_size: int = 64,
    seed: int = 0,
    lateral: np.ndarray | None = None,
    image_ids: Sequence[int] | None = None,
    sides: np.ndarray | None = None,
    bit_depth: int = 8,
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Render phantom images for given findings.

    Args:
        present: (B, 40) bool, findings in :data:`CXR_LT_40` order ("Normal" is ignored).
        image_size: S, output images are S x S.
        seed: with ``image_ids``, fixes every random draw (anatomy, finding geometry, noise).
        lateral: (B,) bool, True renders the lateral template.
        image_ids: (B,) ints naming each image's random stream (default 0..B-1). The same id and seed
            give the same anatomy, noise and finding geometry whatever else is present.
        sides: (B, 40) int, 0 = the patient's right (image left), 1 = left, for one-sided findings
            (default: drawn per image).
        bit_depth: 8 (uint8) or 16 (uint16).
    Returns:
        images (B, S, S) uint8/uint16 and, per image, ``{finding: (S, S) bool mask}`` of its present findings.
    """
    present = np.asarray(present, dtype=bool)
    if present.ndim != 2 or present.shape[1] != len(_NAMES):
        raise ValueError(f"present must be (B, {len(_NAMES)}) in CXR_LT_40 order, got shape {present.shape}.")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}.")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}.")
    batch = present.shape[0]
    lateral = np.zeros(batch, dtype=bool) if lateral is None else np.asarray(lateral, dtype=bool)
    ids = np.arange(batch) if image_ids is None else np.asarray(image_ids)
    draws = [_draw_image_params(seed, int(i), image_size) for i in ids]
    anatomy = np.stack([d[0] for d in draws]) if batch else np.zeros((0, len(_ANATOMY_KEYS)))
    finding_params = np.stack([d[1] for d in draws]) if batch else np.zeros((0, len(_NAMES), _N_FINDING_PARAMS))
    if sides is not None:
        finding_params[:, :, 0] = np.where(np.asarray(sides) == 1, 0.75, 0.25)
    scene = _make_scene(anatomy, lateral, image_size)
    image = _render_anatomy(scene, image_size)
    masks: list[dict[str, np.ndarray]] = [{} for _ in range(batch)]
    for k, name in enumerate(_NAMES):
        if name == "Normal":
            continue
        index = np.flatnonzero(present[:, k])
        if index.size == 0:
            continue
        layers = _render_finding(name, scene.take(index), finding_params[index, k], image_size)
        region = np.zeros((index.size, image_size, image_size), dtype=np.float32)
        for alpha, target, amount in layers:
            alpha = np.broadcast_to(alpha, region.shape).astype(np.float32)
            if target is not None:
                image[index] = _lerp(image[index], target, alpha)
            if amount:
                image[index] = image[index] + amount * alpha
            region = np.maximum(region, alpha)
        for row, image_index in enumerate(index):
            masks[image_index][name] = region[row] > 0.5
    image = np.clip(image, 0.0, 1.0) ** scene.gamma * scene.gain
    noise = np.stack([d[2] for d in draws]) if batch else np.zeros((0, image_size, image_size), np.float32)
    image = np.clip(image + scene.noise_std * noise, 0.0, 1.0)
    top = 255 if bit_depth == 8 else 65535
    images = np.round(image * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    return images, masks


# --------------------------------------------------------------------------------------------------
# Studies, reports, survival
# --------------------------------------------------------------------------------------------------


def _draw_findings(rng: np.random.Generator, n_studies: int) -> np.ndarray:
    prevalence = np.array([PHANTOM_PREVALENCE[name] for name in _NAMES])
    present = rng.random((n_studies, len(_NAMES))) < prevalence
    present[:, _INDEX["Normal"]] = ~present.any(axis=1)
    return present


def _wrap(text: str) -> str:
    return textwrap.fill(text, 70, initial_indent=" ", subsequent_indent=" ", break_on_hyphens=False)


def _study_report(
    rng: np.random.Generator, present_row: np.ndarray, sides_row: np.ndarray, exam: str
) -> tuple[str, str, str, set[str]]:
    """(report, findings, impression, negated names) of one study; side 0 = patient right."""
    sentences = []
    present_names = [name for name, flag in zip(_NAMES, present_row) if flag]
    for name in present_names:
        side = "left" if sides_row[_INDEX[name]] == 1 else "right"
        sentences.append(PHANTOM_SENTENCES[name].format(side=side))
    absent_negatable = [name for name in PHANTOM_NEGATIONS if not present_row[_INDEX[name]]]
    n_negations = min(len(absent_negatable), int(rng.integers(1, 4)))
    negated = [absent_negatable[i] for i in sorted(rng.choice(len(absent_negatable), n_negations, replace=False))]
    sentences += [PHANTOM_NEGATIONS[name] for name in negated]
    impression = " ".join(PHANTOM_IMPRESSIONS[name] for name in present_names)
    findings = " ".join(sentences)
    indications = ("Cough.", "Dyspnea.", "Fever.", "Chest pain.", "Preoperative evaluation.", "Follow-up.")
    indication = indications[int(rng.integers(len(indications)))]
    report = (
        " " * 33 + "FINAL REPORT\n"
        f" EXAMINATION:  {exam}\n \n"
        f" INDICATION:  {indication}\n \n"
        " COMPARISON:  None.\n \n"
        f" FINDINGS:\n \n{_wrap(findings)}\n \n"
        f" IMPRESSION:\n \n{_wrap(impression)}\n"
    )
    return report, findings, impression, set(negated)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG", compress_level=1)  # uint8 -> "L", uint16 -> "I;16"
    return buffer.getvalue()


def _boxes(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _exam(views: Sequence[str]) -> str:
    if "LATERAL" in views:
        return "CHEST (PA AND LAT)"
    return "CHEST (PORTABLE AP)" if views[0] == "AP" else "CHEST (PA)"


@dataclass
class _PhantomPlan:
    """Everything about a phantom set except pixels and report text, which are made lazily per row."""

    seed: int
    image_size: int
    bit_depth: int
    with_masks: bool
    with_survival: bool
    nan_unmentioned: bool
    chunk_size: int
    labels_only: bool
    image_study: np.ndarray  # (N,) study of each image
    image_view: np.ndarray  # (N,) "PA" / "AP" / "LATERAL"
    study_patient: np.ndarray  # (M,) patient of each study
    study_exam: np.ndarray  # (M,) EXAMINATION line of the report
    study_present: np.ndarray  # (M, 40) bool findings
    study_sides: np.ndarray  # (M, 40) int, 0 = patient right
    patient_survival: np.ndarray  # (P, 2) time (years), event; empty without survival


def _plan_phantom(num_images: int, seed: int, lateral_fraction: float, with_survival: bool, **options) -> _PhantomPlan:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0FFEE]))
    image_study, image_view, study_patient, study_exam = [], [], [], []
    patient = 0
    while len(image_study) < num_images:  # patients -> 1 + Poisson(0.6) studies -> frontal (+ lateral)
        for _ in range(1 + int(rng.poisson(0.6))):
            views = ["AP" if rng.random() < 0.35 else "PA"]
            if rng.random() < lateral_fraction:
                views.append("LATERAL")
            views = views[: num_images - len(image_study)]
            if not views:
                break
            image_study += [len(study_patient)] * len(views)
            image_view += views
            study_patient.append(patient)
            study_exam.append(_exam(views))
        patient += 1
    study_patient = np.array(study_patient)
    present = _draw_findings(rng, len(study_patient))
    sides = (rng.random(present.shape) < 0.5).astype(np.int64)
    survival = np.zeros((0, 2))
    if with_survival:
        ever_present = np.zeros((patient, len(_NAMES)), dtype=bool)
        np.logical_or.at(ever_present, study_patient, present)
        log_hazard = ever_present.astype(float) @ np.array([SURVIVAL_LOG_HAZARD.get(n, 0.0) for n in _NAMES])
        event_time = rng.exponential(1.0 / (_BASELINE_HAZARD * np.exp(log_hazard)))
        censor_time = rng.uniform(*_FOLLOW_UP_YEARS, size=patient)
        survival = np.stack([np.minimum(event_time, censor_time), event_time <= censor_time], axis=1)
    return _PhantomPlan(
        seed=seed, image_study=np.array(image_study), image_view=np.array(image_view), study_patient=study_patient,
        study_exam=np.array(study_exam),
        study_present=present, study_sides=sides, patient_survival=survival, with_survival=with_survival, **options,
    )


def _generate_rows(plan: _PhantomPlan, indices: Sequence[int]):
    """Yield the rows (``cxr_features`` dicts) of the given image indices, rendering chunk by chunk."""
    indices = np.asarray(indices, dtype=np.int64)
    reports: dict[int, tuple] = {}
    for start in range(0, len(indices), plan.chunk_size):
        chunk = indices[start:start + plan.chunk_size]
        studies = plan.image_study[chunk]
        if plan.labels_only:  # labels and reports only: no pixels rendered
            images, masks = [None] * len(chunk), [{}] * len(chunk)
        else:
            images, masks = render_phantom_images(
                plan.study_present[studies], image_size=plan.image_size, seed=plan.seed,
                lateral=plan.image_view[chunk] == "LATERAL", image_ids=chunk, sides=plan.study_sides[studies],
                bit_depth=plan.bit_depth,
            )
        for image_index, study, image, image_masks in zip(chunk, studies, images, masks):
            if study not in reports:  # per-study stream: the same text whatever the chunking or sharding
                reports.clear()
                study_rng = np.random.default_rng(np.random.SeedSequence([plan.seed, 0xBEEF, int(study)]))
                reports[study] = _study_report(
                    study_rng, plan.study_present[study], plan.study_sides[study], str(plan.study_exam[study])
                )
            report, findings, impression, negated = reports[study]
            labels = plan.study_present[study].astype(np.float32)
            if plan.nan_unmentioned:
                mentioned = plan.study_present[study] | np.isin(np.array(_NAMES), sorted(negated))
                labels = np.where(mentioned, labels, np.nan).astype(np.float32)
            view = str(plan.image_view[image_index])
            patient = int(plan.study_patient[study])
            row = {
                "image_path": "",
                "labels": labels.tolist(),
                "positive_labels": positive_label_ids(labels.tolist()),
                "report": report,
                "findings": findings,
                "impression": impression,
                "view": view,
                "is_frontal": view != "LATERAL",
                "patient_id": f"phantom-p{patient:06d}",
                "study_id": f"phantom-s{int(study):07d}",
            }
            if not plan.labels_only:
                row["image"] = {"bytes": _png_bytes(image), "path": None}
            if plan.with_masks and not plan.labels_only:
                kept = [(name, mask) for name, mask in image_masks.items() if mask.any()]
                row["boxes"] = [_boxes(mask) for _, mask in kept]
                row["box_labels"] = [_INDEX[name] for name, _ in kept]
                row["masks"] = [{"bytes": _png_bytes(mask.astype(np.uint8) * 255), "path": None} for _, mask in kept]
            if plan.with_survival:
                row["survival_time"] = float(plan.patient_survival[patient, 0])
                row["survival_event"] = bool(plan.patient_survival[patient, 1])
            yield row


def _generate_shards(plan: _PhantomPlan, shards: Sequence[np.ndarray]):
    """IterableDataset generator: `datasets` hands each worker/node a sub-list of ``shards``."""
    for shard in shards:
        yield from _generate_rows(plan, shard)


def load_phantom(
    num_images: int = 512,
    image_size: int = 64,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    with_survival: bool = False,
    with_masks: bool = True,
    lateral_fraction: float = 0.25,
    nan_unmentioned: bool = False,
    bit_depth: int = 8,
    streaming: bool = False,
    num_shards: int = 8,
    chunk_size: int | None = None,
    labels_only: bool = False,
) -> DatasetDict | IterableDatasetDict:
    """Synthetic CXR phantom set as a ``DatasetDict`` (train/validation/test, patient-level split).

    Args:
        num_images: total images (frontal + lateral) over all splits.
        image_size: S; images are S x S grey PNGs stored in memory (no files).
        seed: every random choice derives from it (same seed -> identical bytes).
        split_fractions: patient fractions for train/validation/test.
        with_survival: add ``survival_time`` (years) and ``survival_event`` per patient; the hazard
            grows with the findings in :data:`SURVIVAL_LOG_HAZARD` (exponential event times,
            Uniform(2, 12)-year censoring).
        with_masks: add ``boxes`` (pixels), ``box_labels`` and binary ``masks`` per present finding.
        lateral_fraction: probability that a study also has a lateral image.
        nan_unmentioned: labeler-style labels: absent findings that the report does not negate get
            NaN instead of 0 (present = 1, negated = 0).
        bit_depth: 8 or 16-bit PNGs.
        streaming: return an ``IterableDatasetDict`` that renders rows on the fly (flat memory for
            any ``num_images``; same rows as the in-memory set). Each split has ``num_shards``
            shards, so ``split_dataset_by_node`` and DataLoader workers divide it.
        chunk_size: images rendered per vectorised batch (default keeps ~260k pixels per batch,
            which is cache-sized and fastest).
        labels_only: no pixels are rendered: the rows have no ``image``, ``boxes``, ``box_labels``
            or ``masks`` (labels, reports and every other column are the same as with images).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if not 0.0 <= lateral_fraction <= 1.0:
        raise ValueError(f"lateral_fraction must be in [0, 1], got {lateral_fraction}.")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}.")
    plan = _plan_phantom(
        num_images, seed, lateral_fraction, with_survival, image_size=image_size, bit_depth=bit_depth,
        with_masks=with_masks, nan_unmentioned=nan_unmentioned, labels_only=labels_only,
        chunk_size=chunk_size or max(1, (1 << 18) // (image_size * image_size)),
    )
    features = cxr_features(
        _NAMES, with_masks=with_masks and not labels_only, with_survival=with_survival, with_image=not labels_only
    )
    patient_ids = [f"phantom-p{p:06d}" for p in plan.study_patient[plan.image_study]]
    splits = patient_level_split(patient_ids, split_fractions, seed=seed, split_names=SPLIT_NAMES)
    logger.info("Phantom set: %d images, %d studies.", num_images, len(plan.study_patient))
    if streaming:
        return IterableDatasetDict({
            name: IterableDataset.from_generator(
                _generate_shards,
                features=features,
                gen_kwargs={"plan": plan, "shards": [part for part in np.array_split(index, num_shards) if len(part)]},
            )
            for name, index in splits.items()
        })
    rows = list(_generate_rows(plan, np.arange(num_images)))
    dataset = Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)
    return DatasetDict({name: dataset.select(index) for name, index in splits.items()})


def make_phantom_files(root: str | Path, **load_phantom_kwargs) -> DatasetDict:
    """Write a phantom set as PNG files under ``root/<split>/<patient>/<study>_<row>.png`` and return it
    with ``image``/``image_path`` pointing at the files (for tests of path-based loading).

    ``load_phantom_kwargs`` go to :func:`load_phantom`.
    """
    for option in ("streaming", "labels_only"):
        if load_phantom_kwargs.get(option):
            raise ValueError(f"make_phantom_files writes every image to disk; {option}=True is not supported.")
    root = Path(root)
    phantom = load_phantom(**load_phantom_kwargs)
    result = {}
    for split, dataset in phantom.items():
        def write(row, index, split=split):
            path = root / split / row["patient_id"] / f"{row['study_id']}_{index:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(row["image"]["bytes"])
            return {"image": str(path), "image_path": str(path)}

        undecoded = dataset.cast_column("image", HFImage(decode=False))
        written = undecoded.map(write, with_indices=True, features=dataset.features)
        result[split] = written.cast_column("image", HFImage())  # map keeps the undecoded type
    return DatasetDict(result)

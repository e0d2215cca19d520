"""GLoRI attention maps drawn over the radiograph (paper Fig. 7; official notebook recipe), and ROC curves.

The official visualisation takes a finding's cross-attention over the patch grid, upsamples it bilinearly to the
image, averages the heads, raises it to the power 0.5 and overlays it with a green colormap whose opacity grows with
attention. `GLoRIForMultiLabel(..., output_attentions=True).attention_maps` are already head-averaged, and
averaging commutes with the (linear) upsampling, so the result is the same.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def upsample_attention(
    attention_map, image_size: tuple[int, int], gamma: float = 0.5, scale: str = "max"
) -> np.ndarray:
    """Patch-grid attention `(h, w)` -> `(H, W)` float32 in [0, 1]: bilinear upsampling, power `gamma`, then
    `scale="max"`: divided by the maximum (GLoRI's official recipe; an all-zero map stays zero) or `"minmax"`: the
    minimum to 0 and the maximum to 1, which shows where a near-uniform map (a word's softmax over the patches)
    peaks instead of tinting the whole image (a constant map becomes zero)."""
    grid = torch.as_tensor(np.asarray(attention_map, dtype=np.float32))
    if grid.ndim != 2:
        raise ValueError(f"upsample_attention: attention_map must be (h, w), got shape {tuple(grid.shape)}.")
    if gamma <= 0:
        raise ValueError(f"upsample_attention: gamma must be > 0, got {gamma}.")
    if scale not in ("max", "minmax"):
        raise ValueError(f"upsample_attention: scale must be 'max' or 'minmax', got {scale!r}.")
    upsampled = F.interpolate(grid[None, None], size=tuple(image_size), mode="bilinear", align_corners=False)[0, 0]
    upsampled = upsampled.clamp(min=0) ** gamma
    if scale == "minmax":
        upsampled = upsampled - upsampled.min()
    peak = upsampled.max()
    return (upsampled / peak if peak > 0 else upsampled).numpy()


def _grey_image(image) -> np.ndarray:
    """A displayable grey image in [0, 1]: (H, W), (H, W, C) or (C, H, W) arrays/tensors, min-max scaled."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array.mean(axis=0) if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3) else array.mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"overlay_attention: image must be (H, W), (H, W, C) or (C, H, W), got {array.shape}.")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def overlay_attention(
    image, attention_map, gamma: float = 0.5, color: tuple[float, float, float] = (0.0, 1.0, 0.0), max_alpha: float = 0.7,
    scale: str = "max",
) -> np.ndarray:
    """RGB float32 `(H, W, 3)` in [0, 1]: the grey image with `color` blended in, opacity = `max_alpha` x attention.

    Args:
        image: the radiograph, `(H, W)`, `(H, W, C)` or `(C, H, W)` (e.g. `pixel_values[0]`), any intensity scale.
        attention_map: one finding's `(h, w)` patch-grid attention.
        scale: how the map is brought to [0, 1] (see `upsample_attention`).
    """
    grey = _grey_image(image)
    alpha = max_alpha * upsample_attention(attention_map, grey.shape, gamma, scale)[..., None]
    return (1.0 - alpha) * grey[..., None] + alpha * np.asarray(color, dtype=np.float32)


def save_attention_overlays(
    image, findings: Sequence[dict], path: str | Path, gamma: float = 0.5, columns: int = 4, scale: str = "max"
) -> Path:
    """Save one PNG with a panel per finding: the overlay titled with the finding's name and score.

    Args:
        image: the radiograph (see `overlay_attention`), or its file path (DICOM, PNG, JPEG), read with
            `load_cxr_image` at full precision.
        findings: `cxr-classification` pipeline results called with `return_attention_maps=True`
            (`{"label", "score", "attention_map"}` each).
        path: output `.png` file.
        scale: how each map is brought to [0, 1] (see `upsample_attention`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(image, (str, os.PathLike)):
        from cxrfm.processing import load_cxr_image

        image = load_cxr_image(image)
    if not findings:
        raise ValueError("save_attention_overlays: findings is empty; nothing to draw.")
    missing = [item.get("label", "?") for item in findings if "attention_map" not in item]
    if missing:
        raise ValueError(
            f"save_attention_overlays: no attention_map for {missing}; call the pipeline with return_attention_maps=True."
        )
    columns = min(columns, len(findings))
    rows = -(-len(findings) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, item in zip(axes.flat, findings):
        axis.imshow(overlay_attention(image, item["attention_map"], gamma, scale=scale))
        axis.set_title(f"{item['label']} ({item['score']:.2f})", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    if path.is_dir() or not path.suffix:
        plt.close(figure)
        raise ValueError(f"save_attention_overlays: path {str(path)!r} is a folder; pass an image file path such as "
                         f"{str(path / 'overlay.png')!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    logger.info("Saved attention overlays of %d findings to %s", len(findings), path)
    return path


def save_roc_curves(y_true, y_score, label_names: Sequence[str], folder: str | Path, metrics: dict | None = None
                    ) -> list[Path]:
    """One ROC-curve PNG per finding in `folder` (`roc_<finding>.png`); returns their paths.

    Args:
        y_true, y_score: `(N, C)` labels (1/0; NaN or -1 = not labelled, left out) and scores.
        label_names: the C finding names.
        metrics: a `multilabel_metrics` result; its AUROC and CI go in each legend.
    Findings without both classes among the labelled images get no curve (logged).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_roc_curves: {folder} is a file; pass a folder for the PNGs.")
    folder.mkdir(parents=True, exist_ok=True)
    labels, scores = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    written = []
    for column, name in enumerate(label_names):
        keep = np.isin(labels[:, column], (0.0, 1.0))
        truth = labels[keep, column]
        if truth.min(initial=1) == truth.max(initial=0):
            logger.info("No ROC curve for %s: its labelled images are all one class.", name)
            continue
        fpr, tpr, _ = roc_curve(truth, scores[keep, column])
        legend = name
        entry = (metrics or {}).get("per_class", {}).get(name)
        if entry and entry.get("auroc") is not None:
            ci = entry.get("auroc_ci")
            legend += f": AUROC {entry['auroc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        figure, axis = plt.subplots(figsize=(4, 4))
        axis.plot(fpr, tpr, label=legend)
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        axis.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
                 title=f"{name} (n={int(keep.sum())}, {int(truth.sum())} positive)")
        axis.legend(loc="lower right", fontsize=7)
        figure.tight_layout()
        path = folder / f"roc_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


__all__ = ["overlay_attention", "save_attention_overlays", "save_roc_curves", "upsample_attention"]

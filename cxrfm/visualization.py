"""GLoRI attention maps drawn over the radiograph (paper Fig. 7; official notebook recipe).

The official visualisation takes a finding's cross-attention over the patch grid, upsamples it bilinearly to the
image, averages the heads, raises it to the power 0.5 and overlays it with a green colormap whose opacity grows with
attention. `GLoRIForMultiLabel(..., output_attentions=True).attention_maps` are already head-averaged, and
averaging commutes with the (linear) upsampling, so the result is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def upsample_attention(attention_map, image_size: tuple[int, int], gamma: float = 0.5) -> np.ndarray:
    """Patch-grid attention `(h, w)` -> `(H, W)` float32 in [0, 1]: bilinear upsampling, power `gamma`, divided by
    the maximum (an all-zero map stays zero)."""
    grid = torch.as_tensor(np.asarray(attention_map, dtype=np.float32))
    if grid.ndim != 2:
        raise ValueError(f"upsample_attention: attention_map must be (h, w), got shape {tuple(grid.shape)}.")
    if gamma <= 0:
        raise ValueError(f"upsample_attention: gamma must be > 0, got {gamma}.")
    upsampled = F.interpolate(grid[None, None], size=tuple(image_size), mode="bilinear", align_corners=False)[0, 0]
    upsampled = upsampled.clamp(min=0) ** gamma
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
    image, attention_map, gamma: float = 0.5, color: tuple[float, float, float] = (0.0, 1.0, 0.0), max_alpha: float = 0.7
) -> np.ndarray:
    """RGB float32 `(H, W, 3)` in [0, 1]: the grey image with `color` blended in, opacity = `max_alpha` x attention.

    Args:
        image: the radiograph, `(H, W)`, `(H, W, C)` or `(C, H, W)` (e.g. `pixel_values[0]`), any intensity scale.
        attention_map: one finding's `(h, w)` patch-grid attention.
    """
    grey = _grey_image(image)
    alpha = max_alpha * upsample_attention(attention_map, grey.shape, gamma)[..., None]
    return (1.0 - alpha) * grey[..., None] + alpha * np.asarray(color, dtype=np.float32)


def save_attention_overlays(
    image, findings: Sequence[dict], path: str | Path, gamma: float = 0.5, columns: int = 4
) -> Path:
    """Save one PNG with a panel per finding: the overlay titled with the finding's name and score.

    Args:
        image: the radiograph (see `overlay_attention`).
        findings: `cxr-classification` pipeline results called with `return_attention_maps=True`
            (`{"label", "score", "attention_map"}` each).
        path: output `.png` file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        axis.imshow(overlay_attention(image, item["attention_map"], gamma))
        axis.set_title(f"{item['label']} ({item['score']:.2f})", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    logger.info("Saved attention overlays of %d findings to %s", len(findings), path)
    return path


__all__ = ["overlay_attention", "save_attention_overlays", "upsample_attention"]

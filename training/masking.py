"""Block-wise iBOT masks for the student's global crops (BEiT-style), with an explicit numpy Generator.

Facts from facebookresearch/dinov2 (identical in RPIDIAL/CheXFound) `data/masking.py` and `data/collate.py`,
confirmed by running them (chexfound_dinov2.md §8):
- per batch of n = n_g * B global-crop images, exactly int(n * mask_probability) images are masked (0.5);
- image i of those gets the target count int(N * U(p_i, p_{i+1})), p = float32 linspace(0.1, 0.5, n_masked + 1),
  N = patches per image; the other images get empty masks; the list is then shuffled;
- one mask grows by rectangles: up to 10 tries of area U(min_num_patches = 4, remaining cap), log-uniform aspect in
  [0.3, 1/0.3], h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)), kept only if h < grid height and
  w < grid width (strictly smaller), top/left uniform over all valid positions, accepted when it adds between 1 and
  cap new patches; the cap per rectangle is min(target - masked so far, 0.5 N); growth stops when a round of
  10 tries adds nothing.
The official code fills accepted rectangles cell by cell in Python; here a rectangle is one slice assignment.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch


class BlockMaskGenerator:
    """Mask of one `(height, width)` patch grid with about `num_masking_patches` patches set (see module docstring).

    Args:
        input_size: patch grid (height, width).
        max_num_patches: cap on the patches added by one rectangle (official: 0.5 * N).
        min_num_patches: smallest rectangle area (4).
        min_aspect: smallest aspect ratio (0.3); the largest is 1 / min_aspect.
    """

    def __init__(
        self, input_size: tuple[int, int], max_num_patches: float | None = None, min_num_patches: int = 4,
        min_aspect: float = 0.3,
    ):
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        self.min_num_patches = min_num_patches
        self.log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))

    def _add_rectangle(self, mask: np.ndarray, cap: float, rng: np.random.Generator) -> int:
        """Up to 10 tries to add one rectangle adding 1..cap new patches; returns the patches added."""
        for _ in range(10):
            area = self.min_num_patches + (cap - self.min_num_patches) * rng.random()
            aspect = math.exp(self.log_aspect_ratio[0] + (self.log_aspect_ratio[1] - self.log_aspect_ratio[0]) * rng.random())
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                window = mask[top:top + h, left:left + w]
                added = h * w - int(window.sum())
                if 0 < added <= cap:
                    window[...] = True
                    return added
        return 0

    def __call__(self, num_masking_patches: int, rng: np.random.Generator) -> np.ndarray:
        """`(height, width)` bool mask; fewer than `num_masking_patches` set when no rectangle fits any more."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            added = self._add_rectangle(mask, min(num_masking_patches - count, self.max_num_patches), rng)
            if added == 0:
                break
            count += added
        return mask


@dataclass
class BatchMasks:
    """Masks of one batch of global-crop images.

    masks: `(n_images, N)` bool; mask_indices: flat indices of `masks.flatten().nonzero()`;
    mask_weights: `(M,)` float32 1 / #masked of each masked patch's image; upperbound: sum of the per-image maxima
    int(N p_{i+1}) (the official buffer size for the teacher's masked tokens).
    """

    masks: torch.Tensor
    mask_indices: torch.Tensor
    mask_weights: torch.Tensor
    upperbound: int


def sample_batch_masks(
    n_images: int,
    grid_size: tuple[int, int],
    rng: np.random.Generator,
    mask_probability: float = 0.5,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    generator: BlockMaskGenerator | None = None,
) -> BatchMasks:
    """Masks for `n_images` global-crop images (the official collate rule; see module docstring)."""
    if not 0 <= mask_probability <= 1:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}.")
    low, high = mask_ratio_min_max
    if not 0 <= low <= high <= 1:
        raise ValueError(f"mask_ratio_min_max must satisfy 0 <= min <= max <= 1, got {mask_ratio_min_max}.")
    generator = generator or BlockMaskGenerator(grid_size)
    num_patches = grid_size[0] * grid_size[1]
    n_masked = int(n_images * mask_probability)
    probs = np.linspace(low, high, n_masked + 1, dtype=np.float32)
    masks, upperbound = [], 0
    for i in range(n_masked):
        p_low, p_high = float(probs[i]), float(probs[i + 1])
        masks.append(generator(int(num_patches * (p_low + (p_high - p_low) * rng.random())), rng))
        upperbound += int(num_patches * p_high)
    masks += [np.zeros(grid_size, dtype=bool)] * (n_images - n_masked)
    order = rng.permutation(n_images)
    stacked = torch.from_numpy(np.stack([masks[i] for i in order]).reshape(n_images, num_patches))
    weights = (1.0 / stacked.sum(dim=-1, dtype=torch.float32).clamp(min=1.0)).unsqueeze(-1).expand_as(stacked)[stacked]
    return BatchMasks(stacked, stacked.flatten().nonzero().flatten(), weights, upperbound)


__all__ = ["BatchMasks", "BlockMaskGenerator", "sample_batch_masks"]

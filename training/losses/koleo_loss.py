"""KoLeo regulariser (Kozachenko-Leonenko differential-entropy estimator), DINOv2 (Oquab et al. 2023) Eq. (1).

    L_koleo = -(1 / B) sum_i log(d_i + eps),   d_i = || x_i - x_nn(i) + eps ||_2

over the L2-normalised (eps 1e-8) pre-head student [CLS] features x_i of one global crop, nn(i) the nearest other
row by dot product. Facts from facebookresearch/dinov2 `loss/koleo_loss.py` confirmed by running it
(chexfound_dinov2.md §8): eps is added to the *difference* before the norm (`nn.PairwiseDistance(eps=1e-8)`) and
again before the log, so exact duplicates give -log(1e-8 sqrt(D) + 1e-8); the loss is computed in the incoming
dtype (their autocast-off context does not upcast). The recipe sums it over the 2 global crops, per process, and
weights it by 0.1 (`dino.koleo_loss_weight`).
"""

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L_koleo of `(B, D)` features (B >= 2); see the module docstring."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs (B, D) features with B >= 2, got shape {tuple(features.shape)}.")
    x = F.normalize(features, p=2, dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.T
        dots.fill_diagonal_(-1)  # exclude each row itself
        nearest = dots.argmax(dim=1)
    distances = torch.linalg.vector_norm(x - x[nearest] + eps, ord=2, dim=-1)
    return -torch.log(distances + eps).mean()


__all__ = ["koleo_loss"]

"""Triplet loss on cluster pseudo-labels (CXR-CML paper, Eq. 3).

    L_m = sum_(a,p,n) max(0, d(a, p) - d(a, n) + alpha)                                         (Eq. 3)

d is the Euclidean distance, p shares the anchor's cluster, n does not. The paper names neither the mining nor the
reduction; we offer the two standard ones of Hermans et al. (2017, "In defense of the triplet loss"):
``"batch_all"`` (every valid triplet of the batch) and ``"batch_hard"`` (per anchor, its farthest positive and
nearest negative). ``reduction="sum"`` is Eq. 3 as printed; ``"mean"`` divides by the number of triplets (or
anchors for batch-hard), which keeps L_m on the scale of the contrastive loss whatever the batch size.

Soft pseudo-labels (rows r_i of responsibilities, (B, K)) weight triplet (a, p, n) of batch-all by the probability
that p shares a's cluster and n does not when every sample draws its cluster independently from its row,
sum_k r_ak r_pk (1 - r_nk) (0 when n is a or p): L_m is then the expected Eq. 3, and one-hot rows give Eq. 3
exactly. Batch-hard needs hard labels.

``candidates`` (B, D) makes the triplets cross-modal: anchors are ``embeddings`` (e.g. images), positives and
negatives are the candidates (e.g. the paired texts, with the same pseudo-labels); a's own pair is then a positive.
Without it the triplets are within ``embeddings`` and an anchor is never its own positive.
"""

import torch

MININGS = ("batch_all", "batch_hard")


def pairwise_euclidean(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, B') Euclidean distances; the clamp keeps the sqrt's gradient finite at distance 0."""
    squared = (
        anchors.square().sum(-1)[:, None] + candidates.square().sum(-1)[None, :] - 2 * anchors @ candidates.T
    )
    return squared.clamp(min=1e-12).sqrt()


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mining: str = "batch_all",
    reduction: str = "mean",
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3 over the batch. ``embeddings`` (B, D); ``labels`` (B,) hard cluster ids or (B, K) soft ones;
    ``margin`` = alpha. Returns a scalar; 0 (with a graph) when the batch has no valid triplet."""
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}.")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    if labels.shape[0] != embeddings.shape[0] or labels.dim() not in (1, 2):
        raise ValueError(f"labels must be (B,) or (B, K) with B = {embeddings.shape[0]}, got {tuple(labels.shape)}.")
    cross_modal = candidates is not None
    candidates = embeddings if candidates is None else candidates
    if candidates.shape != embeddings.shape:
        raise ValueError(f"candidates must have the shape of embeddings {tuple(embeddings.shape)}, got {tuple(candidates.shape)}.")
    distances = pairwise_euclidean(embeddings, candidates)
    eye = torch.eye(len(distances), dtype=distances.dtype, device=distances.device)
    not_self = 1 - eye if not cross_modal else torch.ones_like(eye)  # an anchor's own pair is a positive only across modalities
    if labels.dim() == 1:
        same = (labels[:, None] == labels[None, :]).to(distances.dtype)
    elif mining == "batch_hard":
        raise ValueError("batch_hard mining needs hard labels (B,); pass labels.argmax(-1) or use batch_all.")
    if mining == "batch_all":
        # (a, p, n) hinge for every triplet, weighted by the probability that p is a positive and n a negative of a
        hinge = (distances[:, :, None] - distances[:, None, :] + margin).clamp(min=0)
        if labels.dim() == 1:
            weight = (same * not_self)[:, :, None] * (1 - same)[:, None, :]
        else:
            soft = labels.to(distances.dtype)
            pair = soft @ soft.T  # P(l_a = l_p) for a != p
            triple = torch.einsum("ak,pk,nk->apn", soft, soft, soft)  # P(l_a = l_p = l_n) for distinct a, p, n
            # p = a (an image and its own text) is one draw: P(l_a = l_p) = 1, P(l_a = l_p = l_n) = P(l_a = l_n)
            triple = triple * (1 - eye)[:, :, None] + eye[:, :, None] * pair[:, None, :]
            weight = (pair * (1 - eye) + eye)[:, :, None] - triple
            # n equal to a or p can never be a negative (it shares their draw)
            weight = weight * not_self[:, :, None] * (1 - eye)[:, None, :] * (1 - eye)[None, :, :]
        total = (hinge * weight).sum()
        count = weight.sum()
    else:
        positive, negative = same * not_self, 1 - same
        hardest_positive = (distances * positive - 1e9 * (1 - positive)).amax(dim=1)
        hardest_negative = (distances + 1e9 * (1 - negative)).amin(dim=1)
        valid = (positive.sum(1) > 0) & (negative.sum(1) > 0)
        total = ((hardest_positive - hardest_negative + margin).clamp(min=0) * valid).sum()
        count = valid.sum()
    if reduction == "sum":
        return total
    return total / count.clamp(min=1)


__all__ = ["MININGS", "pairwise_euclidean", "triplet_loss"]

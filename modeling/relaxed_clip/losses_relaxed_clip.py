"""Losses of the relaxed-CLIP paper (paper 002: main text Eq. 2-3, supplement Eq. 4-10, Algorithms 1-3).

Every loss takes L2-normalisable embeddings (they are normalised here, so u_i . v_j is a cosine) and the
temperature tau (a float or a 0-d tensor, e.g. `exp(-logit_scale)` of the model).

Distributed training: pass embeddings gathered over all processes *with* gradients (rank-major order, every
process holding `local_batch_size` rows) together with `rank` and `local_batch_size`. The loss then uses only this
process's anchors (rows) against every gathered candidate (columns), as open_clip's `local_loss`. Averaged over
processes this is exactly the full-batch loss; the autograd all-gather sums the gradients of all processes into
each one's features, and DDP's gradient average then gives the full-batch gradient. Without `local_batch_size` every
row is an anchor (the single-process loss).
"""

import torch
import torch.nn.functional as F


def relaxed_similarity(cosine: torch.Tensor, threshold: float = 0.5, alpha: float = 10.0) -> torch.Tensor:
    """Relaxed positive-pair similarity sim(u_i, v_i) of Eq. (3), elementwise on a cosine x = u_i . v_i:

        sigmoid(alpha * (x - t))   if x >= t
        x / (2 t)                  if 0 <= x < t
        x                          if x < 0

    `threshold` = t in (0, 1), `alpha` = the sigmoid slope. The three pieces meet at x = t (value 1/2) and x = 0
    (value 0), so the function is continuous; its slope jumps at t (from 1/(2t) to alpha/4). Above t the value
    saturates towards 1, so a positive pair stops being pulled together once its cosine passes t. The paper applies
    it to positive (same-study) image-text pairs only; negatives keep the raw cosine (`relax_positive_pairs`).

    Args:
        cosine: tensor of cosines, any shape.
    Returns:
        tensor of the same shape.
    """
    saturating = torch.sigmoid(alpha * (cosine - threshold))
    linear = cosine / (2.0 * threshold)
    return torch.where(cosine >= threshold, saturating, torch.where(cosine >= 0, linear, cosine))


def relax_positive_pairs(
    cosine: torch.Tensor, relax_mask: torch.Tensor, threshold: float = 0.5, alpha: float = 10.0
) -> torch.Tensor:
    """`cosine` with Eq. (3) applied where `relax_mask` is True (the positive image-text pairs, Algorithm 1 line 12
    and Algorithm 3 lines 13, 20, 27) and the raw cosine elsewhere. Both (R, C)."""
    return torch.where(relax_mask, relaxed_similarity(cosine, threshold, alpha), cosine)


def multi_positive_info_nce(
    logits: torch.Tensor, positive_mask: torch.Tensor, exclude_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-anchor InfoNCE with one or more positives, the form shared by Eq. (4), (6) and (9):

        l_a = -1/|P_a| * sum_{p in P_a} log( exp(s_ap) / (exp(s_ap) + sum_{n in N_a} exp(s_an)) )

    where P_a are the columns in `positive_mask` and the negatives N_a are all other columns except those in
    `exclude_mask`. Each positive competes only against the negatives, never against the other positives (as in
    Eq. 9, whose denominators leave out the anchor's other positives).

    Args:
        logits: (R, C) similarities already divided by the temperature.
        positive_mask: (R, C) bool, at least one True per row.
        exclude_mask: (R, C) bool or None; columns that are neither positive nor negative (e.g. the anchor itself).
    Returns:
        (R,) loss per anchor.
    """
    not_negative = positive_mask if exclude_mask is None else positive_mask | exclude_mask
    negative_lse = torch.logsumexp(logits.masked_fill(not_negative, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - torch.logaddexp(logits, negative_lse)
    positives_per_row = positive_mask.sum(dim=1)
    return -torch.where(positive_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / positives_per_row


def _anchor_rows(total: int, rank: int, local_batch_size: int | None, device) -> torch.Tensor:
    """Indices (B,) of this process's anchors within `total` gathered rows (all rows without `local_batch_size`)."""
    if local_batch_size is None:
        return torch.arange(total, device=device)
    start, stop = rank * local_batch_size, (rank + 1) * local_batch_size
    if stop > total:
        raise ValueError(
            f"rank {rank} x local_batch_size {local_batch_size} points past the {total} gathered rows; every process "
            "must hold the same number of rows (use drop_last=True in the DataLoader)."
        )
    return torch.arange(start, stop, device=device)


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    relax: bool = False,
    threshold: float = 0.5,
    alpha: float = 10.0,
    rank: int = 0,
    local_batch_size: int | None = None,
) -> torch.Tensor:
    """CLIP InfoNCE, Eq. (2) = supplement Eq. (4)-(5): L = 1/(2N) sum_i (l_i^{u->v} + l_i^{v->u}), with
    l_i^{u->v} = -log exp(sim(u_i, v_i)/tau) / sum_j exp(sim(u_i, v_j)/tau).

    With `relax=True`, sim(u_i, v_i) of the positive pairs is Eq. (3) (`relaxed_similarity`) in both directions,
    applied to the cosine before dividing by tau (Algorithm 1); every other pair keeps the cosine.

    Args:
        image_embeds: (N, D) image embeddings u (gathered over processes when distributed).
        text_embeds: (N, D) text embeddings v, row i paired with image i.
        temperature: tau.
        relax, threshold, alpha: Eq. (3) switch, t and alpha.
        rank, local_batch_size: use only this process's rows as anchors (see module docstring).
    Returns:
        0-d loss.
    """
    image_embeds, text_embeds = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    rows = _anchor_rows(len(image_embeds), rank, local_batch_size, image_embeds.device)
    positive = rows[:, None] == torch.arange(len(text_embeds), device=rows.device)[None, :]
    per_direction = []
    for anchors, candidates in ((image_embeds, text_embeds), (text_embeds, image_embeds)):
        cosine = anchors[rows] @ candidates.T
        if relax:
            cosine = relax_positive_pairs(cosine, positive, threshold, alpha)
        per_direction.append(multi_positive_info_nce(cosine / temperature, positive).mean())
    return (per_direction[0] + per_direction[1]) / 2


def simclr_loss(
    view_a: torch.Tensor,
    view_b: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    rank: int = 0,
    local_batch_size: int | None = None,
) -> torch.Tensor:
    """SimCLR NT-Xent loss of SLIP, supplement Eq. (6)-(7): z = [view_a; view_b] (2N rows), row i's positive is
    its other view (i + N for i < N, i - N otherwise; the printed `u_{N-i}` is read as u_{i-N}), its denominator
    runs over all j != i, and L_SSL = 1/(2N) sum_i l_i. No relaxation (Algorithm 2 line 24).

    Args:
        view_a, view_b: (N, D) embeddings of two strong augmentations of the same N images.
        temperature: tau.
        rank, local_batch_size: as in `clip_loss`.
    Returns:
        0-d loss.
    """
    num = len(view_a)
    z = F.normalize(torch.cat([view_a, view_b]), dim=-1)
    local = _anchor_rows(num, rank, local_batch_size, z.device)
    rows = torch.cat([local, local + num])
    columns = torch.arange(2 * num, device=z.device)
    partner = (rows + num) % (2 * num)
    positive = partner[:, None] == columns[None, :]
    itself = rows[:, None] == columns[None, :]
    return multi_positive_info_nce((z[rows] @ z.T) / temperature, positive, itself).mean()


def slip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    strong_view_a: torch.Tensor,
    strong_view_b: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    ssl_temperature: torch.Tensor | float | None = None,
    relax: bool = False,
    threshold: float = 0.5,
    alpha: float = 10.0,
    rank: int = 0,
    local_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """SLIP loss, supplement Eq. (8): L_SLIP = L_CLIP (Eq. 5, image = weak augmentation, optional Eq. 3 positives)
    + L_SSL (Eq. 7 over two strong augmentations). The paper writes one tau for both; `ssl_temperature` overrides
    it for the SSL term (official SLIP uses a fixed 0.1 there). As in the paper's Algorithm 2, the strong views are
    embedded like the CLIP image (u = normalised projected image embedding); official SLIP instead puts a separate
    MLP head in front of the SSL term. Pass that head's outputs as `strong_view_a/b` to follow SLIP.

    Returns:
        {"clip_loss": 0-d, "ssl_loss": 0-d}; the SLIP loss is their sum.
    """
    return {
        "clip_loss": clip_loss(
            image_embeds, text_embeds, temperature, relax=relax, threshold=threshold, alpha=alpha,
            rank=rank, local_batch_size=local_batch_size,
        ),
        "ssl_loss": simclr_loss(
            strong_view_a, strong_view_b, temperature if ssl_temperature is None else ssl_temperature,
            rank=rank, local_batch_size=local_batch_size,
        ),
    }


def uniclip_loss(
    image_embeds: torch.Tensor,
    weak_image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    relax: bool = False,
    threshold: float = 0.5,
    alpha: float = 10.0,
    include_self_pair: bool = True,
    rank: int = 0,
    local_batch_size: int | None = None,
) -> torch.Tensor:
    """UniCLIP universal loss, supplement Eq. (9)-(10), over z = [original images; weak augmentations; texts]
    (3N rows, z_i, z_{i+N}, z_{i+2N} of study i) in one space:

        l_a = -1/3 sum_{p in {i, i+N, i+2N}} log exp(sim(z_a, z_p)/tau) / sum_{j not in the other two} exp(sim(z_a, z_j)/tau)

    and L = 1/(3N) sum_a l_a. As printed, each anchor's own column counts as one of its three positives (the term
    with sim(z_a, z_a) = 1); `include_self_pair=False` drops that term and the anchor from every denominator
    (UniCLIP's MP-NCE reading, mean over the 2 other views). With `relax=True` Eq. (3) replaces the cosine of the
    positive image-text pairs (original-text and weak-text, both directions; Algorithm 3 lines 13, 20, 27); the
    original-weak pair keeps the cosine. UniCLIP's augmentation-aware embedding is left out, as in the paper
    (supplement 1.3.3).

    Args:
        image_embeds, weak_image_embeds, text_embeds: (N, D) each, row i from study i.
        temperature: tau.
        relax, threshold, alpha: Eq. (3) switch, t and alpha.
        include_self_pair: keep the printed self term.
        rank, local_batch_size: as in `clip_loss`.
    Returns:
        0-d loss.
    """
    num = len(image_embeds)
    z = F.normalize(torch.cat([image_embeds, weak_image_embeds, text_embeds]), dim=-1)
    local = _anchor_rows(num, rank, local_batch_size, z.device)
    rows = torch.cat([local, local + num, local + 2 * num])
    columns = torch.arange(3 * num, device=z.device)
    same_study = (rows % num)[:, None] == (columns % num)[None, :]
    itself = rows[:, None] == columns[None, :]
    cosine = z[rows] @ z.T
    if relax:
        image_text = ((rows // num) == 2)[:, None] ^ ((columns // num) == 2)[None, :]
        cosine = relax_positive_pairs(cosine, same_study & image_text, threshold, alpha)
    if include_self_pair:
        return multi_positive_info_nce(cosine / temperature, same_study).mean()
    return multi_positive_info_nce(cosine / temperature, same_study & ~itself, itself).mean()


__all__ = [
    "relaxed_similarity",
    "relax_positive_pairs",
    "multi_positive_info_nce",
    "clip_loss",
    "simclr_loss",
    "slip_loss",
    "uniclip_loss",
]

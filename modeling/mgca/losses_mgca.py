"""The three MGCA alignment losses (paper 004, Sec. 3.2-3.3) as small functions, plus the token-weight helpers.

Shapes: B local batch, S visual tokens, W text tokens, d embedding width, K prototypes. Distribution is passed in:
`all_*` tensors are the process-gathered embeddings (see `_distributed.py`), `rank` places the local rows.
"""

import torch
import torch.nn.functional as F

from ._distributed import all_reduce_sum, all_reduce_max


def ita_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: float,
    all_image_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    rank: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Instance-wise alignment, Eq. 1-3: sim = v~_i . t~_k (Eq. 1, unit vectors), l^v2t_i and l^t2v_i are InfoNCE
    over the batch at temperature tau_1 (Eq. 2), L_ITA = 1/(2N) sum_i (l^v2t_i + l^t2v_i) (Eq. 3).

    image_embeds, text_embeds: (B, d) local rows, L2-normalised. all_image_embeds / all_text_embeds: (N, d) the rows
    of every process (negatives), `None` = the local batch; row i of this process is global row rank * B + i.
    reduction: "mean" = Eq. 3; "sum" adds the two directions (official, `loss_ita = loss0 + loss1`).
    """
    all_image_embeds = image_embeds if all_image_embeds is None else all_image_embeds
    all_text_embeds = text_embeds if all_text_embeds is None else all_text_embeds
    targets = torch.arange(len(image_embeds), device=image_embeds.device) + rank * len(image_embeds)
    image_to_text = F.cross_entropy(image_embeds @ all_text_embeds.T / temperature, targets)
    text_to_image = F.cross_entropy(text_embeds @ all_image_embeds.T / temperature, targets)
    total = image_to_text + text_to_image
    return total / 2 if reduction == "mean" else total


def cross_attention_parameter_free(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free form of Eq. 4 run by the official code: alpha = softmax_k(q_j . k_k / temperature),
    o_j = sum_k alpha_jk k_k. queries (B, Q, d), keys (B, K, d), key_mask (B, K) True = usable key.
    Returns (o (B, Q, d), alpha (B, Q, K))."""
    # 1/temperature scales the (B, Q, d) queries, not the (B, Q, K) scores: fewer elements to divide
    scores = torch.bmm(queries / temperature, keys.transpose(1, 2))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    alpha = scores.softmax(dim=-1)
    return torch.bmm(alpha, keys), alpha


def clip_token_weights(
    weights: torch.Tensor, valid: torch.Tensor, quantiles: tuple[float, float] | None
) -> torch.Tensor:
    """Token weights w_i^j of Eq. 5: per sample, the positive weights of valid tokens are clipped to their
    [q_low, q_high] quantiles (official 0.1/0.9, `torch.quantile`'s linear interpolation), then every row is
    normalised to sum 1. Zero or invalid entries stay 0. weights, valid: (B, T). Vectorised with `nanquantile`
    (the official code loops over the batch)."""
    weights = weights.masked_fill(~valid, 0.0)
    if quantiles is not None:
        usable = weights > 0
        masked = weights.masked_fill(~usable, float("nan"))
        bounds = torch.nanquantile(masked, torch.tensor(quantiles, dtype=weights.dtype, device=weights.device), dim=1)
        clipped = torch.minimum(torch.maximum(weights, bounds[0][:, None]), bounds[1][:, None])
        weights = torch.where(usable, clipped, torch.zeros_like(weights))
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)


def token_alignment_loss(
    tokens: torch.Tensor,
    attended: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    negatives_mask: torch.Tensor | None = None,
    token_average: bool = True,
) -> torch.Tensor:
    """One CTA direction, Eq. 5 (L_LIA; L_LTA "in the same manner"): within each sample, token r~_j is contrasted
    with every cross-modal output o_k (and o_j with every r~_k), positive k = j, weighted by w_j:
    L = -1/(2N S) sum_i sum_j w_ij (log softmax_k(r~_j . o_k / tau_2)_j + log softmax_k(o_j . r~_k / tau_2)_j).

    tokens (B, T, d) r~, attended (B, T, d) o, weights (B, T) w (0 for padding). negatives_mask (B, T): True =
    token usable as a negative; `None` = all (official: padded slots stay in the denominators).
    token_average: divide by the number of valid tokens S (Eq. 5 as printed); `False` = official (weights sum to
    one, no 1/S).
    """
    similarity = torch.bmm(tokens / temperature, attended.transpose(1, 2))  # (B, T, T): [b, j, k] = r_j . o_k
    diagonal = torch.diagonal(similarity, dim1=1, dim2=2)  # (B, T)
    if negatives_mask is not None:
        # a masked token k is no candidate: column k for the rows (r_j vs o_k), row k for the columns (o_j vs r_k);
        # the diagonal of a masked token has weight 0 anyway
        row_nll = torch.logsumexp(similarity.masked_fill(~negatives_mask[:, None, :], float("-inf")), dim=2) - diagonal
        col_nll = torch.logsumexp(similarity.masked_fill(~negatives_mask[:, :, None], float("-inf")), dim=1) - diagonal
    else:
        row_nll = torch.logsumexp(similarity, dim=2) - diagonal
        col_nll = torch.logsumexp(similarity, dim=1) - diagonal
    per_token = (row_nll + col_nll) / 2
    per_token = torch.where(weights > 0, per_token, torch.zeros_like(per_token))
    per_sample = (weights * per_token).sum(dim=1)
    if token_average:
        count = (weights > 0).sum(dim=1) if negatives_mask is None else negatives_mask.sum(dim=1)
        per_sample = per_sample / count.clamp(min=1)
    return per_sample.mean()


def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int, distributed: bool = False) -> torch.Tensor:
    """Soft cluster codes q (Sec. 3.2, CPA; Cuturi's Sinkhorn-Knopp as in SwAV): Q = exp(scores / epsilon)^T (K, N),
    alternately scaled so prototypes get equal mass 1/K and samples 1/N, then each sample's code sums to 1.
    scores (B, K) local cosine similarities. With `distributed=True` the sums run over every process's samples
    (N = B * world size). The global maximum is subtracted before `exp` (exp(1/0.05) would overflow half
    precision); the first normalisation removes that constant, so the codes are unchanged. Returns (B, K),
    no gradient."""
    with torch.no_grad():
        scores = scores.float()
        reduce_sum = all_reduce_sum if distributed else (lambda x: x)
        reduce_max = all_reduce_max if distributed else (lambda x: x)
        codes = torch.exp((scores - reduce_max(scores.max())) / epsilon).T  # (K, B)
        codes = codes / reduce_sum(codes.sum())
        num_prototypes = codes.shape[0]
        num_samples = reduce_sum(torch.tensor(float(codes.shape[1])))
        for _ in range(iterations):
            codes = codes / reduce_sum(codes.sum(dim=1, keepdim=True)) / num_prototypes  # each prototype: 1/K
            codes = codes / codes.sum(dim=0, keepdim=True) / num_samples  # each sample: 1/N
        return (codes / codes.sum(dim=0, keepdim=True)).T


def cpa_loss(
    image_scores: torch.Tensor,
    text_scores: torch.Tensor,
    image_codes: torch.Tensor,
    text_codes: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Cross-modal prototype alignment, Eq. 7-9: p = softmax_k(cos(x, c_k) / tau_3) (Eq. 7), each modality
    predicts the other's Sinkhorn code, l(v, q_t) = sum_k q_t^(k) log p_v^(k) (Eq. 8), and
    L_CPA = -1/(2N) sum_i (l(v_i, q_t,i) + l(t_i, q_v,i)) (Eq. 9; the minus makes it a cross-entropy).
    *_scores (B, K) cosine similarities to the prototypes, *_codes (B, K) soft codes (rows sum to 1)."""
    image_log_probs = F.log_softmax(image_scores / temperature, dim=1)
    text_log_probs = F.log_softmax(text_scores / temperature, dim=1)
    image_from_text = -(text_codes * image_log_probs).sum(dim=1).mean()
    text_from_image = -(image_codes * text_log_probs).sum(dim=1).mean()
    return (image_from_text + text_from_image) / 2


def total_loss(
    ita: torch.Tensor, cta: torch.Tensor, cpa: torch.Tensor, lambdas: tuple[float, float, float]
) -> torch.Tensor:
    """Eq. 10: L = lambda_1 L_ITA + lambda_2 L_CTA + lambda_3 L_CPA."""
    return lambdas[0] * ita + lambdas[1] * cta + lambdas[2] * cpa


__all__ = [
    "clip_token_weights",
    "cpa_loss",
    "cross_attention_parameter_free",
    "ita_loss",
    "sinkhorn_knopp",
    "token_alignment_loss",
    "total_loss",
]

"""The official MGCA code's per-sample loops (`mgca/models/backbones/encoder.py` `aggregate_tokens`,
`mgca/models/mgca/mgca_module.py` quantile loop and weighted cross-entropies), rewritten as plain references for
the batched code: `tests/test_mgca_losses.py` checks against them and `benchmarks/bench_mgca.py` times them."""

import torch
import torch.nn.functional as F


def official_aggregate_tokens(tokens, hidden, cls_attention):
    """`aggregate_tokens` for one caption: '##' pieces summed into the previous word, [CLS]/[SEP] their own words,
    token p paired with the attention of token p + 1 (zip over L - 1 values), stop at [SEP]; zero padded to L;
    [CLS] dropped. tokens: the L token strings, hidden (L, D), cls_attention (L,).
    Returns word embeddings (L - 1, D), word weights (L - 1,) and the number of words."""
    length, width = hidden.shape
    words, weights, bank, bank_weights = [], [], [], []
    for token, state, weight in zip(tokens, hidden, cls_attention[1:]):
        if token == "[SEP]":
            words += [torch.stack(bank).sum(0), state]
            weights += [sum(bank_weights), weight]
            break
        if token.startswith("##"):
            bank.append(state)
            bank_weights.append(weight)
            continue
        if bank:
            words.append(torch.stack(bank).sum(0))
            weights.append(sum(bank_weights))
        bank, bank_weights = [state], [weight]
    embeds = torch.zeros(length, width)
    embeds[: len(words)] = torch.stack(words)
    merged_weights = torch.zeros(length)
    merged_weights[: len(weights)] = torch.stack(weights)
    return embeds[1:], merged_weights[1:], len(words) - 1


def official_clip_weights(raw_weights, nonzero_only=True):
    """Per sample: clip to the [q10, q90] `torch.quantile` of its non-zero weights (words) or of all of them
    (patches), then normalise every row to sum 1. (B, T) -> (B, T)."""
    clipped = []
    for row in raw_weights:
        row = row.clone()
        index = row.nonzero().squeeze() if nonzero_only else torch.arange(len(row))
        low, high = torch.quantile(row[index], 0.1), torch.quantile(row[index], 0.9)
        row[index] = row[index].clip(low, high)
        clipped.append(row)
    clipped = torch.stack(clipped)
    return clipped / clipped.sum(dim=1, keepdim=True)


def official_cta_direction(tokens, attended, weights, temperature):
    """One CTA direction: cross-entropy over the flattened (B * T) rows and over the columns, each weighted by the
    normalised token weights, summed and divided by B, mean of the two. tokens, attended (B, T, d), weights (B, T)."""
    batch, length, _ = tokens.shape
    similarity = torch.bmm(tokens, attended.permute(0, 2, 1)) / temperature
    targets = torch.arange(length).repeat(batch)
    flat_weights = weights.reshape(-1)
    rows = (F.cross_entropy(similarity.reshape(-1, length), targets, reduction="none") * flat_weights).sum() / batch
    columns = similarity.permute(0, 2, 1).reshape(-1, length)
    cols = (F.cross_entropy(columns, targets, reduction="none") * flat_weights).sum() / batch
    return (rows + cols) / 2

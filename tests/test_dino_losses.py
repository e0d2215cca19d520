"""DINO [CLS] loss, DINO head, teacher targets and schedules against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from cxrfm.training.losses.dino_clstoken_loss import dino_clstoken_loss, dino_cross_entropy, dino_loss_denominator
from cxrfm.training.losses.dino_head import DINOHead, head_sizes_from_state_dict
from cxrfm.training.losses.schedules import CosineSchedule
from cxrfm.training.losses.teacher_targets import TeacherTargets, ema_center, sinkhorn_knopp, softmax_center

LN2 = math.log(2)


def test_dino_cross_entropy_hand_value():
    student = torch.tensor([[0.1 * math.log(3), 0.0]])  # /0.1 -> softmax (3/4, 1/4)
    teacher = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert dino_cross_entropy(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_dino_clstoken_loss_cross_crop_pairing_and_denominator():
    # B = 1, K = 2, 2 global crops, 1 local crop.
    student_global = torch.tensor([[0.0, 0.0], [0.1 * math.log(3), 0.0]])
    teacher = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    student_local = torch.tensor([[0.0, 0.0]])
    global_loss, local_loss = dino_clstoken_loss(student_global, student_local, teacher)
    # student crop 0 vs teacher crop 1: ln 2; student crop 1 vs teacher crop 0: -(.5 ln .75 + .5 ln .25)
    pair_terms = LN2 - (0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    denominator = 2 * 1 + 2  # n_g (n_g - 1) + n_l n_g
    assert global_loss.item() == pytest.approx(pair_terms / denominator, rel=1e-6)
    assert local_loss.item() == pytest.approx(2 * LN2 / denominator, rel=1e-6)
    # same-crop pairing would give a different value (crop 1 vs teacher 1 = -ln .75 ...)
    same_crop = LN2 - math.log(0.75)
    assert global_loss.item() != pytest.approx(same_crop / denominator, rel=1e-3)


def test_dino_denominator_official_counts():
    assert dino_loss_denominator(2, 8) == 18
    assert dino_loss_denominator(2, 0) == 3  # the official max(n_l n_g, 1)
    student = torch.zeros(4, 3)
    teacher = torch.full((4, 3), 1 / 3)
    global_loss, local_loss = dino_clstoken_loss(student, None, teacher)
    assert global_loss.item() == pytest.approx(2 * math.log(3) / 3, rel=1e-6)
    assert local_loss.item() == 0.0
    _, local_8 = dino_clstoken_loss(student, torch.zeros(16, 3), teacher)
    assert local_8.item() == pytest.approx(16 * math.log(3) / 18, rel=1e-6)


def test_dino_loss_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="rows"):
        dino_clstoken_loss(torch.zeros(4, 3), None, torch.zeros(6, 3))


def test_dino_head_equation_and_official_names():
    torch.manual_seed(0)
    head = DINOHead(in_dim=8, out_dim=5, hidden_dim=6, bottleneck_dim=4, n_layers=3)
    names = set(head.state_dict())
    assert names == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
                     "last_layer.weight_g", "last_layer.weight_v"}
    assert torch.all(head.last_layer.weight_g == 1)
    with torch.no_grad():
        head.last_layer.weight_g.fill_(2.0)
    x = torch.randn(3, 8)
    u = head.mlp(x)
    u = u / u.norm(dim=-1, keepdim=True)
    v = head.last_layer.weight_v
    expected = u @ (2.0 * v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), expected)
    # rows of the effective prototype matrix have norm g: logits bounded by g
    assert head(x).abs().max() <= 2.0 + 1e-5
    assert head_sizes_from_state_dict({f"dino_head.{k}": v for k, v in head.state_dict().items()}, "dino_head.") == dict(
        in_dim=8, out_dim=5, hidden_dim=6, bottleneck_dim=4, n_layers=3
    )
    assert head_sizes_from_state_dict({}, "ibot_head.") is None


def test_softmax_centering_lazy_ema_update():
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    assert ema_center(torch.zeros(1, 2), logits, 0.9).tolist()[0] == pytest.approx([0.2, 0.4])
    targets = TeacherTargets(2, mode="centering")
    first = targets(logits, teacher_temp=1.0)
    torch.testing.assert_close(first, torch.softmax(logits, dim=-1))  # the centre was 0 for this batch
    assert targets.center.tolist()[0] == pytest.approx([0.2, 0.4])
    second = targets(logits, teacher_temp=0.5)
    torch.testing.assert_close(second, softmax_center(logits, torch.tensor([[0.2, 0.4]]), 0.5))
    assert targets.center.tolist()[0] == pytest.approx([0.2 * 0.9 + 0.2, 0.4 * 0.9 + 0.4])
    # no rows (no masked patch anywhere): centre unchanged
    assert ema_center(targets.center, torch.zeros(0, 2)).equal(targets.center)


def test_sinkhorn_one_iteration_hand_value():
    # exp(z / T) rows (samples) = (1, 2) and (3, 4): Q (K x B) = [[1, 3], [2, 4]]
    logits = torch.log(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    probs = sinkhorn_knopp(logits, teacher_temp=1.0, n_iterations=1)
    expected = torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]])
    torch.testing.assert_close(probs, expected)


def test_sinkhorn_three_iterations_properties_and_empty():
    generator = torch.Generator().manual_seed(0)
    # near-collapsed teacher: every row prefers prototype 0
    logits = 0.05 * torch.randn(12, 6, generator=generator, dtype=torch.float64)
    logits[:, 0] += 0.3
    probs = sinkhorn_knopp(logits, teacher_temp=0.07)
    assert probs.dtype == torch.float32  # the official code forces float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(12))  # columns of Q normalised last
    # the equation written out in float64 numpy (3 row/column rounds)
    q = np.exp(logits.numpy() / 0.07).T
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(axis=1, keepdims=True) * 6
        q /= q.sum(axis=0, keepdims=True) * 12
    np.testing.assert_allclose(probs.numpy(), (q * 12).T, rtol=1e-4, atol=1e-7)
    # Sinkhorn spreads the mass over the prototypes where the sharpened softmax collapses on one
    softmax_usage = torch.softmax(logits.float() / 0.07, dim=-1).sum(dim=0)
    assert probs.sum(dim=0).std() < 0.8 * softmax_usage.std()
    # the official iBOT version crashes here (no process group); with no masked patch it returns (0, K)
    assert sinkhorn_knopp(torch.zeros(0, 6), 0.07).shape == (0, 6)
    with pytest.raises(ValueError, match="mode"):
        TeacherTargets(6, mode="softmax")


def test_cosine_schedule_official_endpoints():
    temp = CosineSchedule(0.07, 0.07, total_iters=3, warmup_iters=3, start_warmup_value=0.04)
    assert [temp[i] for i in range(4)] == pytest.approx([0.04, 0.055, 0.07, 0.07])  # 0.07 one step before the end
    lr = CosineSchedule(1.0, 0.0, total_iters=6, warmup_iters=2, freeze_iters=1)
    assert [lr[i] for i in range(7)] == pytest.approx([0.0, 0.0, 1.0, 1.0, 0.75, 0.25, 0.0])  # peak twice
    with pytest.raises(ValueError, match="warmup_iters"):
        CosineSchedule(1.0, 0.0, total_iters=2, warmup_iters=3)
    assert np.all(np.diff(CosineSchedule(0.994, 1.0, 100).values) >= 0)  # momentum rises to 1

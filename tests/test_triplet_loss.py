"""Triplet loss of CXR-CML (Eq. 3) against hand-computed values."""

import itertools

import pytest
import torch

from cxrfm.training.losses.triplet_loss import triplet_loss

# 1-D points 0, 1, 3, 6 in clusters {0, 1} and {3, 6}: d01 = 1, d02 = 3, d03 = 6, d12 = 2, d13 = 5, d23 = 3.
POINTS = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_batch_all_by_hand():
    # alpha = 1; the only active triplets are (2, 3, 0): 3 - 3 + 1 = 1 and (2, 3, 1): 3 - 2 + 1 = 2; 8 triplets in all
    assert triplet_loss(POINTS, LABELS, margin=1.0, reduction="sum").item() == pytest.approx(3.0)
    assert triplet_loss(POINTS, LABELS, margin=1.0).item() == pytest.approx(3.0 / 8)


def test_batch_hard_by_hand():
    # per anchor (farthest positive, nearest negative): 0: (1, 3) -> 0; 1: (1, 2) -> 0; 2: (3, 2) -> 2; 3: (3, 5) -> 0
    assert triplet_loss(POINTS, LABELS, margin=1.0, mining="batch_hard", reduction="sum").item() == pytest.approx(2.0)
    assert triplet_loss(POINTS, LABELS, margin=1.0, mining="batch_hard").item() == pytest.approx(0.5)


def test_cross_modal_by_hand_and_gradient():
    # images 0, 4; texts 1, 2; alpha = 2: anchor 0: d(0,1) - d(0,2) + 2 = 1; anchor 1: d(4,2) - d(4,1) + 2 = 1
    images = torch.tensor([[0.0], [4.0]], requires_grad=True)
    texts = torch.tensor([[1.0], [2.0]])
    loss = triplet_loss(images, torch.tensor([0, 1]), margin=2.0, reduction="sum", candidates=texts)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    # d/dx0 [|x0 - 1| - |x0 - 2|] = -1 + 1 = 0; d/dx1 [|x1 - 2| - |x1 - 1|] = 1 - 1 = 0 in 1-D
    torch.testing.assert_close(images.grad, torch.zeros(2, 1))


def test_no_valid_triplet_is_zero_with_graph():
    points = POINTS.clone().requires_grad_(True)
    loss = triplet_loss(points, torch.zeros(4, dtype=torch.long), margin=1.0)
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("cross_modal", [False, True])
def test_soft_labels_are_the_expected_hard_loss(cross_modal):
    """Soft batch-all = expectation of Eq. 3 over independent label draws from the rows (enumerated: 2^4 draws)."""
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    texts = torch.randn(4, 3, generator=generator, dtype=torch.float64) if cross_modal else None
    soft = torch.softmax(torch.randn(4, 2, generator=generator, dtype=torch.float64), dim=-1)
    expected_total = expected_count = 0.0
    for draw in itertools.product(range(2), repeat=4):
        probability = torch.prod(soft[torch.arange(4), torch.tensor(draw)]).item()
        hard = torch.tensor(draw)
        expected_total += probability * triplet_loss(points, hard, 0.5, reduction="sum", candidates=texts).item()
        same = hard[:, None] == hard[None, :]
        positives = same.sum(1) - (0 if cross_modal else 1)
        expected_count += probability * (positives * (~same).sum(1)).sum().item()
    soft_sum = triplet_loss(points, soft, 0.5, reduction="sum", candidates=texts).item()
    assert soft_sum == pytest.approx(expected_total, rel=1e-10)
    assert triplet_loss(points, soft, 0.5, candidates=texts).item() == pytest.approx(expected_total / expected_count, rel=1e-10)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).double()
    assert triplet_loss(points, one_hot, 0.5, candidates=texts).item() == pytest.approx(
        triplet_loss(points, torch.tensor([0, 1, 1, 0]), 0.5, candidates=texts).item(), rel=1e-12
    )


def test_bad_input():
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(POINTS, LABELS, mining="semi_hard")
    with pytest.raises(ValueError, match="hard labels"):
        triplet_loss(POINTS, torch.full((4, 2), 0.5), mining="batch_hard")
    with pytest.raises(ValueError, match="labels must be"):
        triplet_loss(POINTS, LABELS[:3])

"""KoLeo with the official epsilon placement (inside the distance and before the log)."""

import math

import pytest
import torch

from cxrfm.training.losses.koleo_loss import koleo_loss


def test_koleo_hand_value_with_duplicates():
    eps = 1e-8
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]], dtype=torch.float64)
    # rows 0 and 2 are duplicates after normalisation: d = ||(eps, eps)|| = eps sqrt 2; row 1's nearest is row 0
    d_dup = eps * math.sqrt(2)
    d_1 = math.sqrt((1 - eps) ** 2 + (1 + eps) ** 2)
    expected = -(2 * math.log(d_dup + eps) + math.log(d_1 + eps)) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-9)
    assert koleo_loss(x).item() != pytest.approx(-(2 * math.log(eps) + math.log(math.sqrt(2))) / 3, rel=1e-3)


def test_koleo_keeps_dtype_and_rejects_single_row():
    x = torch.randn(5, 4)
    assert koleo_loss(x).dtype == torch.float32
    assert koleo_loss(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.randn(1, 4))


def test_koleo_spread_points_score_lower():
    spread = torch.eye(4)
    clustered = torch.eye(4) * 0.01 + 1.0
    assert koleo_loss(spread) < koleo_loss(clustered)

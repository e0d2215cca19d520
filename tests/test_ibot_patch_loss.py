"""iBOT patch loss: per-image weights 1/#masked, division by all global-crop images (masked or not)."""

import math

import pytest
import torch

from cxrfm.training.losses.ibot_patch_loss import ibot_mask_weights, ibot_patch_loss

LN2 = math.log(2)


def test_mask_weights_per_image_counts():
    masks = torch.tensor([[True, True, False], [False, True, False], [False, False, False]])
    assert ibot_mask_weights(masks).tolist() == [0.5, 0.5, 1.0]
    assert ibot_mask_weights(masks).dtype == torch.float32
    with pytest.raises(ValueError, match="bool"):
        ibot_mask_weights(masks.float())


def test_ibot_loss_hand_value_unequal_masks_and_unmasked_image():
    # 3 images: 2 masked patches, 1 masked patch, none. K = 2.
    masks = torch.tensor([[True, True, False], [False, True, False], [False, False, False]])
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1 * math.log(3), 0.0]])
    teacher = torch.tensor([[0.3, 0.7], [1.0, 0.0], [1.0, 0.0]])
    loss = ibot_patch_loss(student, teacher, ibot_mask_weights(masks), n_images=3)
    # image 0: two patches of -ln 2 with weight 1/2; image 1: ln(3/4) with weight 1; image 2 counts in the 3
    expected = -(0.5 * -LN2 + 0.5 * -LN2 + math.log(0.75)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ibot_loss_no_masked_patch_is_zero_and_differentiable():
    student = torch.zeros(0, 4, requires_grad=True)
    loss = ibot_patch_loss(student, torch.zeros(0, 4), torch.zeros(0), n_images=8)
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad.shape == (0, 4)
    with pytest.raises(ValueError, match="n_images"):
        ibot_patch_loss(student, torch.zeros(0, 4), torch.zeros(0), n_images=0)

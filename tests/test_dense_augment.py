"""Masks and boxes stay aligned with their image through every dense-transfer augmentation."""

import numpy as np
import pytest
import torch

from cxrfm.processing.augment_dense import DenseAugmentation, DenseAugmentationParams, DenseSample, resize_sample


def _square_sample(size=64, box=(10, 20, 30, 44)):
    """An image that IS its mask (1 inside a rectangle, 0 outside) with the rectangle's box."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, y0:y1, x0:x1] = 1
    return DenseSample(image=mask.float(), masks=mask.clone(), boxes=torch.tensor([box], dtype=torch.float32),
                       box_labels=torch.tensor([0]))


def _mask_box(mask: torch.Tensor) -> list[float]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


@pytest.mark.parametrize("params", [
    DenseAugmentationParams(angle=0.0, crop=(5, 3, 50, 40), flip=False),
    DenseAugmentationParams(angle=0.0, crop=(0, 0, 64, 64), flip=True),
    DenseAugmentationParams(angle=0.0, crop=(8, 12, 44, 48), flip=True),
])
def test_crop_and_flip_keep_mask_image_and_box_aligned(params):
    sample = _square_sample()
    out = DenseAugmentation().apply(sample, params)
    mask = out.masks[0].bool()
    # the bilinearly resampled image and the nearest-neighbour mask agree except on a one-pixel border
    agree = (out.image[0] > 0.5) == mask
    assert (~agree).float().mean() < 0.03
    # the box is the mask's own bounding box, to within a pixel of resampling
    assert out.boxes.shape == (1, 4)
    np.testing.assert_allclose(out.boxes[0].tolist(), _mask_box(mask), atol=1.0)
    # masks stay binary (nearest neighbour), the image stays on the display scale
    assert set(torch.unique(out.masks).tolist()) <= {0, 1}
    assert 0 <= out.image.min() and out.image.max() <= 1


def test_flip_mirrors_box_exactly():
    sample = _square_sample()
    out = DenseAugmentation().apply(sample, DenseAugmentationParams(angle=0.0, crop=(0, 0, 64, 64), flip=True))
    assert out.boxes[0].tolist() == [64 - 30, 20, 64 - 10, 44]
    assert torch.equal(out.masks[0], sample.masks[0].flip(-1))


def test_rotation_box_encloses_rotated_mask_and_image_follows_mask():
    sample = _square_sample()
    out = DenseAugmentation().apply(sample, DenseAugmentationParams(angle=15.0, crop=(0, 0, 64, 64), flip=False))
    mask = out.masks[0].bool()
    mx0, my0, mx1, my1 = _mask_box(mask)
    bx0, by0, bx1, by1 = out.boxes[0].tolist()
    assert bx0 <= mx0 + 1 and by0 <= my0 + 1 and bx1 >= mx1 - 1 and by1 >= my1 - 1
    assert ((out.image[0] > 0.5) != mask).float().mean() < 0.03


def test_random_draws_replay_and_targets_follow_every_draw():
    augmentation = DenseAugmentation(rotation=(-10, 10), scale=(0.6, 1.0))
    sample = _square_sample()
    first = augmentation(sample, torch.Generator().manual_seed(3))
    again = augmentation(sample, torch.Generator().manual_seed(3))
    assert torch.equal(first.image, again.image) and torch.equal(first.boxes, again.boxes)
    for seed in range(10):
        out = augmentation(sample, torch.Generator().manual_seed(seed))
        if out.masks.sum() == 0:  # cropped away entirely: its box must be gone too
            assert len(out.boxes) == 0
            continue
        assert ((out.image[0] > 0.5) != out.masks[0].bool()).float().mean() < 0.03


def test_box_cropped_out_of_frame_is_dropped():
    sample = _square_sample(box=(0, 0, 6, 6))
    out = DenseAugmentation().apply(sample, DenseAugmentationParams(angle=0.0, crop=(20, 20, 40, 40), flip=False))
    assert out.boxes.shape == (0, 4) and out.box_labels.shape == (0,)
    assert out.masks.sum() == 0


def test_resize_maps_boxes_with_the_pixels():
    sample = _square_sample(size=64, box=(8, 16, 24, 48))
    out = resize_sample(sample, 32)
    assert out.boxes[0].tolist() == [4, 8, 12, 24]
    assert _mask_box(out.masks[0].bool()) == [4, 8, 12, 24]


def test_scale_outside_unit_interval_is_an_error():
    with pytest.raises(ValueError, match="scale"):
        DenseAugmentation(scale=(0.5, 1.5))

"""MGCA's official pre-training images (paper 004, official `DataTransforms` + `resize_img`): `RandomCrop` cuts a
fixed-size window at a uniformly random offset of the letterboxed `pixel_values`, replayable from a generator. The
letterbox itself: tests/test_image_processing.py; the recipe that uses both: tests/test_mgca_recipe.py."""

import numpy as np
import pytest
import torch

from cxrfm.processing.augment_cxr import RandomCrop
from cxrfm.processing.image_processing_cxr import CXRImageProcessor


def letterbox(side, **overrides):
    """MGCA's training-side processor: letterbox to `side` x `side`, no centre crop, normalised with (0.5, 0.5)."""
    settings = dict(size={"longest_edge": side}, do_pad=True, pad_size=side, do_center_crop=False,
                    image_mean=[0.5] * 3, image_std=[0.5] * 3)
    settings.update(overrides)
    return CXRImageProcessor(**settings)


def window_offsets(crop, source):
    """Every (top, left) where `crop` (C, h, w) is exactly the window of `source` (C, H, W)."""
    height, width = crop.shape[-2:]
    return [(top, left) for top in range(source.shape[-2] - height + 1) for left in range(source.shape[-1] - width + 1)
            if torch.equal(source[:, top : top + height, left : left + width], crop)]


def test_crops_are_windows_of_the_letterboxed_images_at_the_drawn_offsets(rng):
    """Letterbox 40 -> crop 32 on non-square images: each output is exactly the 32 x 32 window of its letterboxed
    image at the offset `sample_params` draws from the same generator state (one draw per image, in order)."""
    images = [rng.random(shape).astype(np.float32) for shape in ((50, 70), (64, 48), (40, 40), (90, 30))]
    letterboxed = letterbox(40)(images, return_tensors="pt")["pixel_values"]
    assert letterboxed.shape == (4, 3, 40, 40)
    crop = RandomCrop(32)
    crops = crop(letterboxed, torch.Generator().manual_seed(7))
    assert crops.shape == (4, 3, 32, 32)
    replay = torch.Generator().manual_seed(7)
    for image, source in zip(crops, letterboxed):
        top, left = crop.sample_params(40, 40, replay)
        assert 0 <= top <= 8 and 0 <= left <= 8
        assert (top, left) in window_offsets(image, source)


def test_the_centre_offset_gives_the_evaluation_processor_output(rng):
    """Training crop at the centre = what the processor saved with the model (letterbox + centre crop) returns, so
    training and evaluation see the same geometry and intensities."""
    image = rng.random((50, 70)).astype(np.float32)
    letterboxed = letterbox(40)(image, return_tensors="pt")["pixel_values"][0]
    evaluation = letterbox(40, do_center_crop=True, crop_size=32)(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(RandomCrop(32).apply(letterboxed, (4, 4)), evaluation, rtol=0, atol=0)


def test_same_generator_state_same_crops_and_every_offset_appears():
    pixels = torch.randn(6, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    crop = RandomCrop(32)
    first = crop(pixels, torch.Generator().manual_seed(3))
    torch.testing.assert_close(crop(pixels, torch.Generator().manual_seed(3)), first, rtol=0, atol=0)
    assert not torch.equal(crop(pixels, torch.Generator().manual_seed(4)), first)
    generator = torch.Generator().manual_seed(0)
    offsets = [crop.sample_params(40, 40, generator) for _ in range(300)]
    assert {top for top, _ in offsets} == set(range(9)) and {left for _, left in offsets} == set(range(9))
    assert len(set(offsets)) > 60  # top and left drawn independently: most of the 81 positions in 300 draws


def test_rectangular_crop_and_single_image():
    image = torch.arange(2 * 6 * 5, dtype=torch.float32).reshape(2, 6, 5)
    out = RandomCrop((4, 5))(image, torch.Generator().manual_seed(1))
    assert out.shape == (2, 4, 5)
    assert len(window_offsets(out, image)) == 1 and window_offsets(out, image)[0][1] == 0  # full width: left = 0


def test_bad_crops_name_the_problem():
    with pytest.raises(ValueError, match=r"RandomCrop.size must be positive"):
        RandomCrop(0)
    with pytest.raises(ValueError, match=r"RandomCrop.size 32x32 is larger than the 30x40 image"):
        RandomCrop(32)(torch.zeros(3, 30, 40))
    with pytest.raises(ValueError, match=r"RandomCrop expects \(C, H, W\) or \(B, C, H, W\)"):
        RandomCrop(4)(torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"RandomCrop.apply expects one \(C, H, W\) image"):
        RandomCrop(4).apply(torch.zeros(1, 3, 8, 8), (0, 0))

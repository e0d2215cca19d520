"""GLoRIForMultiLabel: Eq. 1-2 as the official code computes them, the masked BCE, checkpoint conversion, save/load."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageClassification

from cxrfm.modeling import GLoRIConfig, GLoRIForMultiLabel
from cxrfm.modeling.chexfound.configuration_chexfound import CheXFoundConfig
from cxrfm.modeling.chexfound.convert_glori import convert_glori_checkpoint, infer_head_config
from cxrfm.modeling.chexfound.modeling_glori import masked_multilabel_bce_loss

LABELS = {0: "Cardiomegaly", 1: "Edema", 2: "Pleural Effusion"}


def tiny_config(**overrides) -> GLoRIConfig:
    backbone = CheXFoundConfig.from_preset("tiny", num_hidden_layers=4, image_size=32, patch_size=8)
    return GLoRIConfig(backbone_config=backbone, decoder_dim=8, num_heads=2, ffn_dim=16, id2label=LABELS, **overrides)


def random_features(config: GLoRIConfig, batch: int = 2, patches: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, patches, config.feature_dim, generator=generator),
            torch.randn(batch, config.feature_dim, generator=generator))


def reference_glori_logits(weights: dict, patch_tokens, cls_tokens, num_heads: int, cat_cls: bool):
    """Eq. 1-2 + CLS skip + per-class linear, written with plain tensor ops from the official key names
    (eval mode: the first residual is norm1(q + q))."""
    layer = "decoder.layers.0."

    def layer_norm(x, name):
        return F.layer_norm(x, x.shape[-1:], weights[layer + name + ".weight"], weights[layer + name + ".bias"], 1e-5)

    memory = torch.relu(patch_tokens @ weights["decoder.embed_standart.weight"].T + weights["decoder.embed_standart.bias"])
    queries = weights["decoder.query_embed.weight"].expand(patch_tokens.shape[0], -1, -1)
    queries = layer_norm(queries + queries, "norm1")
    w_q, w_k, w_v = weights[layer + "multihead_attn.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = weights[layer + "multihead_attn.in_proj_bias"].chunk(3)
    batch, classes, dim = queries.shape
    head_dim = dim // num_heads

    def split(x):
        return x.reshape(batch, -1, num_heads, head_dim).transpose(1, 2)

    q, k, v = split(queries @ w_q.T + b_q), split(memory @ w_k.T + b_k), split(memory @ w_v.T + b_v)
    probabilities = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)  # Eq. 2
    attended = (probabilities @ v).transpose(1, 2).reshape(batch, classes, dim)
    attended = attended @ weights[layer + "multihead_attn.out_proj.weight"].T + weights[layer + "multihead_attn.out_proj.bias"]
    queries = layer_norm(queries + attended, "norm2")
    hidden = torch.relu(queries @ weights[layer + "linear1.weight"].T + weights[layer + "linear1.bias"])
    queries = layer_norm(queries + hidden @ weights[layer + "linear2.weight"].T + weights[layer + "linear2.bias"], "norm3")
    if cat_cls:
        queries = torch.cat([cls_tokens[:, None].expand(-1, classes, -1), queries], dim=-1)
    logits = (queries * weights["decoder.duplicate_pooling"][..., 0]).sum(-1) + weights["decoder.duplicate_pooling_bias"]
    return logits, probabilities.mean(dim=1)


def official_state_dict(config: GLoRIConfig, cat_cls: bool, seed: int = 1) -> dict:
    """Random tensors under the official key names and shapes (RPIDIAL/CheXFound glori.pth layout)."""
    generator = torch.Generator().manual_seed(seed)
    dim, classes, feature_dim = config.decoder_dim, config.num_labels, config.feature_dim
    out_dim = dim + (feature_dim if cat_cls else 0)
    shapes = {
        "decoder.embed_standart.weight": (dim, feature_dim), "decoder.embed_standart.bias": (dim,),
        "decoder.query_embed.weight": (classes, dim),
        "decoder.layers.0.multihead_attn.in_proj_weight": (3 * dim, dim),
        "decoder.layers.0.multihead_attn.in_proj_bias": (3 * dim,),
        "decoder.layers.0.multihead_attn.out_proj.weight": (dim, dim),
        "decoder.layers.0.multihead_attn.out_proj.bias": (dim,),
        "decoder.layers.0.linear1.weight": (config.ffn_dim, dim), "decoder.layers.0.linear1.bias": (config.ffn_dim,),
        "decoder.layers.0.linear2.weight": (dim, config.ffn_dim), "decoder.layers.0.linear2.bias": (dim,),
        **{f"decoder.layers.0.norm{i}.{p}": (dim,) for i in (1, 2, 3) for p in ("weight", "bias")},
        "decoder.duplicate_pooling": (classes, out_dim, 1), "decoder.duplicate_pooling_bias": (classes,),
    }
    return {key: 0.5 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.mark.parametrize("cat_cls", [True, False])
def test_logits_and_attention_match_plain_torch_reference(cat_cls):
    config = tiny_config(cat_cls=cat_cls)
    model = GLoRIForMultiLabel(config).eval()
    official = official_state_dict(config, cat_cls)
    missing, unexpected = model.load_state_dict(convert_glori_checkpoint(official), strict=False)
    assert unexpected == [] and all(key.startswith("backbone.") for key in missing)
    features = random_features(config)
    output = model(backbone_features=features, output_attentions=True)
    expected_logits, expected_attention = reference_glori_logits(official, *features, config.num_heads, cat_cls)
    torch.testing.assert_close(output.logits, expected_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.attention_maps, expected_attention.reshape(2, 3, 4, 4), atol=1e-6, rtol=1e-5)


def test_image_path_equals_feature_path_and_shapes():
    config = tiny_config()
    model = GLoRIForMultiLabel(config).eval()
    pixel_values = torch.randn(2, 3, 32, 48)  # non-square: the grid comes from the image (4 x 6)
    with torch.no_grad():
        from_images = model(pixel_values=pixel_values, output_attentions=True)
        features = model.extract_backbone_features(pixel_values)
        from_features = model(backbone_features=features)
    assert features[0].shape == (2, 24, 4 * 32) and features[1].shape == (2, 4 * 32)
    assert from_images.logits.shape == (2, 3) and from_images.attention_maps.shape == (2, 3, 4, 6)
    torch.testing.assert_close(from_images.attention_maps.sum(dim=(-1, -2)), torch.ones(2, 3))
    torch.testing.assert_close(from_images.logits, from_features.logits)
    with pytest.raises(ValueError, match="exactly one of"):
        model(pixel_values=pixel_values, backbone_features=features)
    with pytest.raises(ValueError, match="square grid"):
        model(backbone_features=features, output_attentions=True)
    with pytest.raises(ValueError, match=r"expected patch_tokens \(B, N, 128\)"):
        model(backbone_features=(features[0][..., :64], features[1]))


def test_masked_bce_sum_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, float("nan")], [-1.0, 1.0, 0.0]])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = bce(2.0, 1) + bce(-1.0, 0) + bce(3.0, 1) + bce(-2.0, 0)  # NaN and -1 entries ignored, summed
    assert masked_multilabel_bce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    model = GLoRIForMultiLabel(tiny_config()).eval()
    features = random_features(model.config)
    output = model(backbone_features=features, labels=labels)
    assert output.loss.item() == pytest.approx(masked_multilabel_bce_loss(output.logits, labels).item())
    with pytest.raises(ValueError, match="labels must have the logits' shape"):
        masked_multilabel_bce_loss(logits, labels[:, :2])


def test_queries_frozen_initialised_and_kept_by_save_load(tmp_path):
    config = tiny_config()
    config.decoder_dim, config.num_heads = 64, 4
    model = GLoRIForMultiLabel(config).eval()
    queries = model.head.query_embed
    assert "head.query_embed" in model.state_dict()
    assert all(parameter is not queries for parameter in model.parameters())  # frozen: not a parameter
    assert abs(queries.mean().item()) < 0.3 and 0.8 < queries.std().item() < 1.2  # N(0, 1), 192 draws
    torch.testing.assert_close(model.head.group_fc_bias.detach(), torch.zeros(3))
    fan_in, fan_out = model.head.group_fc_weight.shape[1], model.head.group_fc_weight.shape[0]
    assert model.head.group_fc_weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.3)

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is GLoRIForMultiLabel
    assert torch.equal(reloaded.head.query_embed, queries)
    features = random_features(config)
    torch.testing.assert_close(reloaded(backbone_features=features).logits, model(backbone_features=features).logits)
    config_back = AutoConfig.from_pretrained(tmp_path)
    assert config_back.problem_type == "multi_label_classification" and config_back.label2id["Edema"] == 1
    assert config_back.backbone_config.patch_size == 8 and config_back.cat_cls is True


def test_linear_probe_head_by_hand():
    config = tiny_config(head="linear", linear_avgpool=True)
    model = GLoRIForMultiLabel(config).eval()
    weight, bias = model.head.weight, model.head.bias
    assert weight.shape == (3, 4 * 32 + 32) and torch.equal(bias.detach(), torch.zeros(3))
    assert weight.std().item() == pytest.approx(0.01, rel=0.2)
    patch_tokens, cls_tokens = random_features(config)
    expected = torch.cat([cls_tokens, patch_tokens[..., -32:].mean(1)], -1) @ weight.T + bias
    torch.testing.assert_close(model(backbone_features=(patch_tokens, cls_tokens)).logits, expected)
    with pytest.raises(ValueError, match="only for head='glori'"):
        model(backbone_features=(patch_tokens, cls_tokens), output_attentions=True)


def test_conversion_reads_official_checkpoint_layouts():
    config = tiny_config(cat_cls=False)
    official = official_state_dict(config, cat_cls=False)
    wrapped = {"model": {f"module.classifiers_dict.glori_lr_0_001.{key}": value for key, value in official.items()},
               "iteration": 10}
    converted = convert_glori_checkpoint(wrapped)
    assert converted.keys() == convert_glori_checkpoint(official).keys()
    assert converted["head.group_fc_weight"].shape == (3, 8)
    inferred = infer_head_config(converted, config.backbone_config)
    assert inferred == dict(head="glori", n_last_blocks=4, decoder_dim=8, ffn_dim=16, cat_cls=False, num_labels=3)

    two_heads = {**wrapped["model"], **{k.replace("lr_0_001", "lr_0_01"): v for k, v in wrapped["model"].items()}}
    with pytest.raises(ValueError, match="holds 2 heads; pick one with classifier_name"):
        convert_glori_checkpoint(two_heads)
    assert convert_glori_checkpoint(two_heads, classifier_name="glori_lr_0_01").keys() == converted.keys()
    with pytest.raises(ValueError, match="unrecognised key 'backbone.blocks.0.w'"):
        convert_glori_checkpoint({**official, "backbone.blocks.0.w": torch.zeros(1)})
    with pytest.raises(ValueError, match="only one decoder layer"):
        convert_glori_checkpoint({**official, "decoder.layers.1.linear1.weight": torch.zeros(1)})

    linear = {"linear.weight": torch.randn(3, 5 * 32), "linear.bias": torch.zeros(3)}
    assert infer_head_config(convert_glori_checkpoint(linear), config.backbone_config) == dict(
        head="linear", n_last_blocks=4, linear_avgpool=True, num_labels=3)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="head must be one of"):
        tiny_config(head="mlp")
    with pytest.raises(ValueError, match="n_last_blocks=5 must be in"):
        tiny_config(n_last_blocks=5)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        GLoRIConfig(backbone_config=CheXFoundConfig.from_preset("tiny"), n_last_blocks=2, decoder_dim=10, num_heads=4)
    with pytest.raises(TypeError, match="backbone_config must be"):
        GLoRIConfig(backbone_config=42)
    paper = GLoRIConfig.from_preset("paper")
    assert (paper.feature_dim, paper.decoder_dim, paper.num_heads, paper.ffn_dim, paper.dropout, paper.cat_cls) == (
        4096, 768, 8, 2048, 0.1, True)


def test_cli_convert_glori_reproduces_official_outputs(tmp_path):
    from cxrfm.cli import main as cli_main
    from cxrfm.modeling import CheXFoundModel

    from cxrfm.contract import check_folder
    from cxrfm.processing import CXRImageProcessor

    config = tiny_config(cat_cls=False)
    CheXFoundModel(config.backbone_config).save_pretrained(tmp_path / "backbone")
    CXRImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path / "backbone")
    official = official_state_dict(config, cat_cls=False, seed=3)
    torch.save({"model": {f"module.classifiers_dict.glori.{k}": v for k, v in official.items()}, "iteration": 1},
               tmp_path / "glori.pth")
    argv = ["convert", "glori", str(tmp_path / "glori.pth"), str(tmp_path / "out"), "--backbone", str(tmp_path / "backbone"),
            "--label-names", ",".join(LABELS.values()), "--num-heads", "2"]
    assert cli_main(argv) == 0
    model = GLoRIForMultiLabel.from_pretrained(tmp_path / "out").eval()
    assert model.config.cat_cls is False and model.config.id2label == LABELS and model.config.decoder_dim == 8
    features = random_features(config, seed=5)
    expected, _ = reference_glori_logits(official, *features, config.num_heads, cat_cls=False)
    torch.testing.assert_close(model(backbone_features=features).logits, expected, atol=1e-5, rtol=1e-5)
    # the converted folder keeps the Hub contract: auto_map, cxr-classification code and config, processor
    assert check_folder(tmp_path / "out") == []
    assert cli_main(argv) == 2  # non-empty output folder without --overwrite: a clear error, exit code 2

"""CheXFoundConfig / CheXFoundModel: official semantics, outputs, presets, init, checkpointing, save/load."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.modeling.chexfound.configuration_chexfound import CHEXFOUND_PRESETS
from cxrfm.modeling.chexfound.modeling_chexfound import swiglu_hidden_features


def randomized_tiny_model(**overrides) -> CheXFoundModel:
    """Tiny model whose every tensor is O(0.1-1) random, so LayerScale, registers, CLS and pos-embed all
    change the output (their official inits are ~0)."""
    model = CheXFoundModel(CheXFoundConfig.from_preset("tiny", **overrides)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def official_reference_forward(state: dict, pixel_values: torch.Tensor, config: CheXFoundConfig) -> torch.Tensor:
    """The official CheXFound ViT forward written out with torch.nn.functional (final-normed tokens).

    Token layout and formulas from reference/chexfound_dinov2.md §1: [CLS + pos0, registers, patches + pos];
    pre-norm blocks x += ls1 * attn(norm1 x); x += ls2 * w3(silu(W1 x) * (W2 x)), W1/W2 = halves of w12.
    """
    dim, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
    batch = pixel_values.shape[0]
    tokens = F.conv2d(pixel_values, state["vit.patch_embed.proj.weight"], state["vit.patch_embed.proj.bias"],
                      stride=config.patch_size).flatten(2).transpose(1, 2)
    grid_h, grid_w = pixel_values.shape[2] // config.patch_size, pixel_values.shape[3] // config.patch_size
    pos = state["vit.pos_embed"]
    stored = int(math.sqrt(pos.shape[1] - 1))
    if (grid_h, grid_w) != (stored, stored):
        patch_pos = F.interpolate(
            pos[:, 1:].reshape(1, stored, stored, dim).permute(0, 3, 1, 2),
            scale_factor=((grid_h + 0.1) / stored, (grid_w + 0.1) / stored), mode="bicubic", antialias=False,
        ).permute(0, 2, 3, 1).reshape(1, -1, dim)
        pos = torch.cat([pos[:, :1], patch_pos], dim=1)
    tokens = torch.cat([state["vit.cls_token"].expand(batch, -1, -1), tokens], dim=1) + pos
    tokens = torch.cat([tokens[:, :1], state["vit.reg_token"].expand(batch, -1, -1), tokens[:, 1:]], dim=1)
    length = tokens.shape[1]
    for i in range(config.num_hidden_layers):
        p = {k[len(f"vit.blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"vit.blocks.{i}.")}
        h = F.layer_norm(tokens, (dim,), p["norm1.weight"], p["norm1.bias"], eps)
        q, k, v = F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(
            batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(batch, length, dim), p["attn.proj.weight"], p["attn.proj.bias"])
        tokens = tokens + p["ls1.gamma"] * attn
        h = F.layer_norm(tokens, (dim,), p["norm2.weight"], p["norm2.bias"], eps)
        w1_out, w2_out = F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"]).chunk(2, dim=-1)
        tokens = tokens + p["ls2.gamma"] * F.linear(F.silu(w1_out) * w2_out, p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    return F.layer_norm(tokens, (dim,), state["vit.norm.weight"], state["vit.norm.bias"], eps)


@pytest.mark.parametrize("size", [(32, 32), (48, 64)], ids=["native", "interpolated-3x4-grid"])
def test_forward_matches_official_formulas(size):
    model = randomized_tiny_model()
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(pixel_values)
        expected = official_reference_forward(model.state_dict(), pixel_values, model.config)
    num_tokens = 1 + 2 + (size[0] // 16) * (size[1] // 16)
    assert out.last_hidden_state.shape == (2, num_tokens, 32)
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])


def test_native_size_uses_stored_pos_embed_unchanged():
    vit = randomized_tiny_model().vit
    assert vit.pos_embed_for_grid(2, 2, torch.float32) is vit.pos_embed
    resampled = vit.pos_embed_for_grid(3, 4, torch.float32)
    assert resampled.shape == (1, 1 + 12, 32)
    assert torch.equal(resampled[:, 0], vit.pos_embed[:, 0])  # the CLS slot is never resampled


def test_swiglu_width_matches_official_formula():
    assert swiglu_hidden_features(1024, 4.0) == 2736  # ViT-L, reference/chexfound_dinov2.md §1
    assert swiglu_hidden_features(32, 4.0) == 88  # tiny: (int(128 * 2 / 3) + 7) // 8 * 8
    block = randomized_tiny_model().vit.blocks[0]
    assert block.mlp.fc1.weight.shape == (2 * 88, 32) and block.mlp.fc2.weight.shape == (32, 88)


def test_intermediate_layers_are_final_normed_and_drop_registers():
    model = randomized_tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        features = model.get_intermediate_layers(pixel_values, n=2)
    assert len(out.hidden_states) == 3  # embeddings + 2 blocks
    assert len(features) == 2
    for (patch_tokens, cls_token), block_output in zip(features, out.hidden_states[1:]):
        normed = model.vit.norm(block_output)
        assert patch_tokens.shape == (2, 4, 32) and cls_token.shape == (2, 32)
        torch.testing.assert_close(patch_tokens, normed[:, 1 + 2:])  # CLS and 2 registers dropped
        torch.testing.assert_close(cls_token, normed[:, 0])
    torch.testing.assert_close(features[-1][1], out.pooler_output)


def test_bool_masked_pos_replaces_patch_embeddings_before_position_embedding():
    model = randomized_tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    with torch.no_grad():
        masked = model(pixel_values, bool_masked_pos=mask, output_hidden_states=True).hidden_states[0]
        clean = model(pixel_values, output_hidden_states=True).hidden_states[0]
    vit = model.vit
    for patch in (0, 3):  # masked token = mask_token + that patch's position embedding
        torch.testing.assert_close(masked[0, 3 + patch], vit.mask_token[0] + vit.pos_embed[0, 1 + patch])
    torch.testing.assert_close(masked[0, 3 + 1], clean[0, 3 + 1])
    torch.testing.assert_close(masked[1], clean[1])
    with pytest.raises(ValueError, match=r"bool_masked_pos must be a bool tensor of shape \(2, 4\)"):
        model(pixel_values, bool_masked_pos=torch.zeros(2, 5, dtype=torch.bool))


def test_attention_maps_are_the_ones_the_block_applies():
    model = randomized_tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values, output_attentions=True, output_hidden_states=True)
        block = model.vit.blocks[0]
        normed = block.norm1(out.hidden_states[0])
        values = block.attn.qkv(normed).reshape(2, 7, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]
        rebuilt = block.attn.proj((out.attentions[0] @ values).transpose(1, 2).reshape(2, 7, 32))
        expected = block.attn(normed)  # timm's SDPA path
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 7, 7)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 7))
    torch.testing.assert_close(rebuilt, expected, rtol=1e-5, atol=1e-6)
    assert model(pixel_values).attentions is None


def test_bad_input_sizes_are_named():
    model = randomized_tiny_model()
    with pytest.raises(ValueError, match=r"input size 40x32 is not divisible by patch_size=16"):
        model(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, height, width\), got \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        model.get_intermediate_layers(torch.randn(1, 3, 32, 33))


def test_gradient_checkpointing_toggles_timm_and_keeps_gradients():
    model = randomized_tiny_model().train()
    pixel_values = torch.randn(2, 3, 32, 32)

    def grads():
        model.zero_grad()
        model(pixel_values).last_hidden_state.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = grads()
    model.activation_checkpointing_enable()
    assert model.vit.grad_checkpointing and model.is_activation_checkpointing
    checkpointed = grads()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], msg=name)
    model.activation_checkpointing_disable()
    assert not model.vit.grad_checkpointing


def test_init_follows_official_scheme():
    torch.manual_seed(0)
    model = CheXFoundModel(CheXFoundConfig.from_preset("tiny", image_size=128))  # 64 pos slots for a std estimate
    vit = model.vit
    assert torch.count_nonzero(vit.mask_token) == 0
    assert vit.cls_token.abs().max() < 1e-5 and vit.reg_token.abs().max() < 1e-5
    assert 0.015 < vit.pos_embed.std().item() < 0.025
    assert torch.all(vit.blocks[1].ls2.gamma == 1e-5)
    assert torch.count_nonzero(vit.blocks[0].attn.qkv.bias) == 0
    assert 0.018 < vit.blocks[0].mlp.fc1.weight.std().item() < 0.022  # trunc_normal(std=.02), 5,632 values


@pytest.mark.parametrize("name", sorted(CHEXFOUND_PRESETS))
def test_presets_build_on_meta_device(name):
    config = CheXFoundConfig.from_preset(name)
    with torch.device("meta"):
        model = CheXFoundModel(config)
    grid = config.image_size // config.patch_size
    assert model.vit.pos_embed.shape == (1, 1 + grid * grid, config.hidden_size)
    assert len(model.vit.blocks) == config.num_hidden_layers


def test_released_preset_has_hand_computed_parameter_count():
    """ViT-L/16 at 512, SwiGLU 2736, 4 registers; every parameter of CheXFoundModel, mask token included:
    patch embed 1024*3*16*16 + 1024 = 787,456; cls 1,024; registers 4,096; mask token 1,024;
    pos_embed (1 + 32*32) * 1024 = 1,049,600; per block: 2 LayerNorms 4,096 + qkv 3,148,800 + proj 1,049,600
    + 2 LayerScales 2,048 + w12 (1024 -> 5472) 5,608,800 + w3 (2736 -> 1024) 2,802,688 = 12,616,032,
    x 24 = 302,784,768; final norm 2,048. Total 304,630,016 (the "~304M" of ViT-L)."""
    with torch.device("meta"):
        model = CheXFoundModel(CheXFoundConfig.from_preset("chexfound-vit-large-patch16-512"))
    assert sum(p.numel() for p in model.parameters()) == 304_630_016
    assert model.vit.blocks[0].mlp.fc2.in_features == 2736
    assert model.vit.reg_token.shape == (1, 4, 1024)


def test_defaults_are_the_released_model():
    released = CheXFoundConfig.from_preset("chexfound-vit-large-patch16-512")
    assert released.to_diff_dict() == CheXFoundConfig().to_diff_dict()  # no field differs from the defaults


def test_config_errors_name_the_field():
    valid = r"valid presets: chexfound-vit-large-patch16-512, tiny, vit-base-patch16-224, .*vit-small-patch16-512\."
    with pytest.raises(ValueError, match=rf"Unknown CheXFound preset 'vit-huge'; {valid}"):
        CheXFoundConfig.from_preset("vit-huge")
    with pytest.raises(ValueError, match="hidden_size=30 must be divisible by num_attention_heads=4"):
        CheXFoundConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="image_size=50 must be a positive multiple of patch_size=16"):
        CheXFoundConfig(image_size=50)


def test_drop_path_uniform_or_linear():
    uniform = CheXFoundModel(CheXFoundConfig.from_preset("tiny", drop_path_rate=0.4))
    assert [b.drop_path1.drop_prob for b in uniform.vit.blocks] == [0.4, 0.4]
    linear = CheXFoundModel(CheXFoundConfig.from_preset("tiny", drop_path_rate=0.4, drop_path_uniform=False))
    assert linear.vit.blocks[1].drop_path2.drop_prob == pytest.approx(0.4)
    assert isinstance(linear.vit.blocks[0].drop_path1, torch.nn.Identity)  # rate 0 in the first block


def test_plain_mlp_preset_and_no_registers():
    config = CheXFoundConfig.from_preset("tiny", use_swiglu_ffn=False, num_register_tokens=0, layerscale_value=None)
    model = CheXFoundModel(config).eval()
    assert model.vit.reg_token is None and model.vit.blocks[0].mlp.fc1.out_features == 128
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
        (patches, cls), = model.get_intermediate_layers(torch.randn(1, 3, 32, 32), n=1)
    assert out.last_hidden_state.shape == (1, 5, 32) and patches.shape == (1, 4, 32)


def test_save_and_load_round_trip(tmp_path):
    model = randomized_tiny_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "chexfound" and saved["num_register_tokens"] == 2
    reloaded = CheXFoundModel.from_pretrained(tmp_path).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).last_hidden_state, reloaded(pixel_values).last_hidden_state)
    assert set(model._no_split_modules) == {"Block"}
    assert any(type(m).__name__ == "Block" for m in model.modules())
    assert model(pixel_values, return_dict=False)[0].shape == (1, 7, 32)

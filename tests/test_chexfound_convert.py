"""Official CheXFound/DINOv2 checkpoint -> CheXFoundModel conversion (functions and `cxrfm convert chexfound`)."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from cxrfm.cli import main
from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.modeling.chexfound.convert_chexfound import (
    convert_chexfound_checkpoint,
    infer_chexfound_config,
    rename_official_backbone_keys,
)


def tiny_model(seed: int = 1) -> CheXFoundModel:
    """Tiny model with O(0.3) random values everywhere (official inits of tokens and LayerScale are ~0)."""
    model = CheXFoundModel(CheXFoundConfig.from_preset("tiny")).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def official_backbone(state: dict, block_chunks: int) -> dict:
    """Our `vit.*` tensors under the official names (reference/chexfound_dinov2.md §2): `backbone.` prefix,
    `register_tokens`, `mlp.w12` / `mlp.w3`, block i stored as `blocks.<i // chunk_size>.<i>` when chunked."""
    num_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("vit.blocks."))
    chunk_size = num_layers // block_chunks if block_chunks else None
    official = {}
    for key, tensor in state.items():
        name = key[len("vit."):]
        name = "register_tokens" if name == "reg_token" else name
        match = re.match(r"blocks\.(\d+)\.(.+)", name)
        if match:
            index, param = int(match[1]), match[2].replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
            name = f"blocks.{index // chunk_size}.{index}.{param}" if chunk_size else f"blocks.{index}.{param}"
        official[f"backbone.{name}"] = tensor.clone()
    return official


def ssl_heads(generator: torch.Generator) -> dict:
    """DINO (bottleneck 16) and iBOT (bottleneck 8) heads: 3-layer MLP + weight-normed prototypes, official names."""
    heads = {}
    for head, bottleneck in (("dino_head", 16), ("ibot_head", 8)):
        for layer, shape in ((0, (64, 32)), (2, (64, 64)), (4, (bottleneck, 64))):
            heads[f"{head}.mlp.{layer}.weight"] = torch.randn(shape, generator=generator)
            heads[f"{head}.mlp.{layer}.bias"] = torch.randn(shape[0], generator=generator)
        heads[f"{head}.last_layer.weight_g"] = torch.ones(128, 1)
        heads[f"{head}.last_layer.weight_v"] = torch.randn(128, bottleneck, generator=generator)
    return heads


@pytest.fixture
def teacher_checkpoint(tmp_path):
    """`teacher_checkpoint.pth` as the official trainer writes it (block_chunks=2, heads included)."""
    model = tiny_model()
    heads = ssl_heads(torch.Generator().manual_seed(2))
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {**official_backbone(model.state_dict(), block_chunks=2), **heads}}, path)
    return path, model, heads


def test_cli_converts_chunked_teacher_checkpoint(teacher_checkpoint, tmp_path):
    src, model, heads = teacher_checkpoint
    out_dir = tmp_path / "converted"
    assert main(["convert", "chexfound", str(src), str(out_dir), "--preset", "tiny"]) == 0

    for name in ("config.json", "model.safetensors", "configuration_chexfound.py", "modeling_chexfound.py"):
        assert (out_dir / name).is_file(), name
    from cxrfm.contract import check_folder

    assert check_folder(out_dir) == []  # the Hub contract: auto_map, cxr-feature-extraction, processor code
    preprocessor = json.loads((out_dir / "preprocessor_config.json").read_text())
    assert preprocessor["crop_size"] == {"height": 32, "width": 32}  # the tiny model's image_size
    converted = CheXFoundModel.from_pretrained(out_dir).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state)
        for (p1, c1), (p2, c2) in zip(converted.get_intermediate_layers(pixel_values, 2),
                                      model.get_intermediate_layers(pixel_values, 2)):
            assert torch.equal(p1, p2) and torch.equal(c1, c2)
    saved_heads = load_file(out_dir / "ssl_heads.safetensors")
    assert saved_heads.keys() == heads.keys()
    assert all(torch.equal(saved_heads[k], heads[k]) for k in heads)


def test_inferred_config_needs_only_the_head_count(teacher_checkpoint, tmp_path):
    src, model, _ = teacher_checkpoint
    out_dir = tmp_path / "inferred"
    assert main(["convert", "chexfound", str(src), str(out_dir), "--num-attention-heads", "2"]) == 0
    config = CheXFoundConfig.from_pretrained(out_dir)
    tiny = CheXFoundConfig.from_preset("tiny")
    for field in ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "mlp_ratio", "use_swiglu_ffn", "num_register_tokens", "qkv_bias"):
        assert getattr(config, field) == getattr(tiny, field), field
    converted = CheXFoundModel.from_pretrained(out_dir).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state)


def test_ssl_meta_arch_checkpoint_picks_the_requested_branch():
    teacher, student = tiny_model(seed=1), tiny_model(seed=3)
    model_state = {
        **{f"teacher.{k}": v for k, v in official_backbone(teacher.state_dict(), block_chunks=2).items()},
        **{f"student.{k}": v for k, v in official_backbone(student.state_dict(), block_chunks=2).items()},
        **{f"student.{k}": v for k, v in ssl_heads(torch.Generator().manual_seed(4)).items()},
        "dino_loss.center": torch.zeros(1, 128),
        "ibot_patch_loss.center": torch.zeros(1, 1, 128),
    }
    backbone, heads = convert_chexfound_checkpoint(
        {"model": model_state}, CheXFoundConfig.from_preset("tiny"), branch="student"
    )
    assert all(torch.equal(backbone[k], v) for k, v in student.state_dict().items())
    assert "dino_loss.center" in heads and "dino_head.mlp.0.weight" in heads


def test_bare_ddp_state_dict_without_backbone_prefix():
    model = tiny_model()
    bare = {f"module.{k[len('backbone.'):]}": v for k, v in official_backbone(model.state_dict(), 0).items()}
    backbone, heads = convert_chexfound_checkpoint(bare, CheXFoundConfig.from_preset("tiny"))
    assert heads == {} and backbone.keys() == model.state_dict().keys()


def test_released_layout_infers_the_released_config():
    """Official ViT-L/16-512 key layout (block_chunks=4, on the meta device: shapes only) -> released preset."""
    with torch.device("meta"):
        released = CheXFoundModel(CheXFoundConfig.from_preset("chexfound-vit-large-patch16-512"))
    official = official_backbone(released.state_dict(), block_chunks=4)
    assert official["backbone.blocks.3.23.mlp.w12.weight"].shape == (5472, 1024)  # chunk 3 holds blocks 18-23
    backbone = rename_official_backbone_keys({k[len("backbone."):]: v for k, v in official.items()})
    config = infer_chexfound_config(backbone)
    expected = CheXFoundConfig.from_preset("chexfound-vit-large-patch16-512")
    assert config.to_diff_dict() == expected.to_diff_dict()


def test_missing_backbone_key_fails_loudly(teacher_checkpoint):
    src, _, _ = teacher_checkpoint
    checkpoint = torch.load(src, weights_only=True)
    del checkpoint["teacher"]["backbone.blocks.1.1.ls2.gamma"]
    with pytest.raises(ValueError, match=r"missing keys: \['vit.blocks.1.ls2.gamma'\]"):
        convert_chexfound_checkpoint(checkpoint, CheXFoundConfig.from_preset("tiny"))


def test_unexpected_keys_fail_loudly(teacher_checkpoint):
    src, _, _ = teacher_checkpoint
    checkpoint = torch.load(src, weights_only=True)
    checkpoint["teacher"]["backbone.blocks.0.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys: \['vit.blocks.0.attn.extra.weight'\]"):
        convert_chexfound_checkpoint(checkpoint, CheXFoundConfig.from_preset("tiny"))
    del checkpoint["teacher"]["backbone.blocks.0.0.attn.extra.weight"]
    checkpoint["teacher"]["backbone.head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"Unexpected backbone keys .*\['head.weight'\]"):
        convert_chexfound_checkpoint(checkpoint, CheXFoundConfig.from_preset("tiny"))
    del checkpoint["teacher"]["backbone.head.weight"]
    checkpoint["teacher"]["linear_probe.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"Unexpected non-backbone keys .*\['linear_probe.weight'\]"):
        convert_chexfound_checkpoint(checkpoint, CheXFoundConfig.from_preset("tiny"))


def test_wrong_preset_lists_shape_mismatches(teacher_checkpoint, tmp_path, capsys):
    src, _, _ = teacher_checkpoint
    assert main(["convert", "chexfound", str(src), str(tmp_path / "out"), "--preset", "vit-small-patch16-224"]) == 2
    error = capsys.readouterr().err
    assert "shape mismatches" in error and "vit.cls_token: checkpoint (1, 1, 32) vs model (1, 1, 384)" in error


def test_cli_refuses_pickled_objects_missing_files_and_nonempty_output(tmp_path, capsys):
    pickled = tmp_path / "pickled.pth"
    torch.save({"teacher": {"cls_token": torch.zeros(1)}, "optimizer": torch.optim.SGD}, pickled)
    assert main(["convert", "chexfound", str(pickled), str(tmp_path / "a")]) == 2
    assert "weights_only=True" in capsys.readouterr().err

    assert main(["convert", "chexfound", str(tmp_path / "nope.pth"), str(tmp_path / "b")]) == 2
    assert "Checkpoint not found" in capsys.readouterr().err

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    torch.save({"teacher": {}}, tmp_path / "empty.pth")
    assert main(["convert", "chexfound", str(tmp_path / "empty.pth"), str(tmp_path / "c")]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["convert", "chexfound", str(tmp_path / "empty.pth"), str(tmp_path / "c"), "--overwrite"]) == 2
    assert "state dict for branch 'teacher' is empty" in capsys.readouterr().err

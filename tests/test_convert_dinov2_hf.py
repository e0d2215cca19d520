"""`cxrfm convert dinov2-hf`: a transformers Dinov2Model (RAD-DINO layout) -> CheXFoundModel, identical outputs."""

import json
import logging

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from cxrfm.cli import main as cli_main
from cxrfm.contract import check_folder
from cxrfm.modeling.chexfound import CheXFoundModel
from cxrfm.modeling.chexfound.convert_dinov2_hf import convert_dinov2_state_dict
from cxrfm.training.pretrain_chexfound import PretrainArguments, build_student, main
from cxrfm.training.recipe import parse_args


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                          layerscale_value=0.3)
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # non-trivial LayerScale, mask token and biases so a wrong mapping shows
        for name, param in model.named_parameters():
            if "lambda1" in name or "mask_token" in name or name.endswith("bias"):
                param.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("rad_dino")
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "BitImageProcessor", "image_mean": [0.53] * 3, "image_std": [0.26] * 3}))
    return folder, model


def test_cli_conversion_gives_identical_outputs(dinov2_folder, tmp_path):
    folder, source = dinov2_folder
    out = tmp_path / "converted"
    assert cli_main(["convert", "dinov2-hf", str(folder), str(out)]) == 0
    model = CheXFoundModel.from_pretrained(out).eval()
    assert (model.config.patch_size, model.config.num_register_tokens, model.config.use_swiglu_ffn) == (14, 0, False)
    generator = torch.Generator().manual_seed(1)
    for height, width in ((28, 28), (56, 42)):  # native size and an interpolated one
        pixels = torch.randn(2, 3, height, width, generator=generator)
        masks = torch.rand(2, (height // 14) * (width // 14), generator=generator) > 0.5
        with torch.no_grad():
            ours = model(pixels, bool_masked_pos=masks)
            theirs = source(pixel_values=pixels, bool_masked_pos=masks)
        torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.pooler_output, theirs.pooler_output, rtol=0, atol=1e-6)
    assert json.loads((out / "preprocessor_config.json").read_text())["image_mean"] == [0.53] * 3
    assert check_folder(out) == []
    assert cli_main(["convert", "dinov2-hf", str(tmp_path / "missing"), str(tmp_path / "x")]) != 0


def test_unknown_tensor_is_an_error(dinov2_folder):
    _, source = dinov2_folder
    state = dict(source.state_dict())
    state["encoder.layer.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        convert_dinov2_state_dict(state)


def test_continued_pretraining_from_dinov2_folder_initialises_heads(dinov2_folder, tmp_path, caplog):
    folder, source = dinov2_folder
    argv = ["--config", "training/configs/pretrain_chexfound_tiny.yaml", "--output_dir", str(tmp_path / "run"),
            "--init_from", str(folder), "--global_crops_size", "28", "--local_crops_size", "14",
            "--phantom_num_images", "40", "--batch_size", "8", "--max_steps", "2", "--logging_steps", "1"]
    with caplog.at_level(logging.WARNING, logger="cxrfm.training.pretrain_chexfound"):
        student = build_student(parse_args(PretrainArguments, argv))
    assert "no dino_head.* tensors" in caplog.text and "no ibot_head.* tensors" in caplog.text
    torch.testing.assert_close(student.backbone.vit.blocks[0].ls1.gamma, source.encoder.layer[0].layer_scale1.lambda1)
    summary = main(argv)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"])
    # the teacher moved away from the source weights by EMA of the trained student
    moved = summary["teacher"].backbone.vit.blocks[0].attn.qkv.weight
    assert not torch.equal(moved, student.backbone.vit.blocks[0].attn.qkv.weight)

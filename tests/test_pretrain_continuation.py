"""Continued pretraining from a folder converted from an official CheXFound checkpoint (DINO/iBOT heads kept)."""

import logging

import torch

from cxrfm.commands.convert import convert_chexfound_file
from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.training.losses.dino_head import DINOHead
from cxrfm.training.pretrain_chexfound import PretrainArguments, build_student, main
from cxrfm.training.recipe import parse_args


def official_teacher_checkpoint(with_ibot: bool = True) -> dict:
    """A tiny checkpoint in the official `teacher_checkpoint.pth` layout (chunked blocks, w12/w3, register_tokens)."""
    torch.manual_seed(0)
    model = CheXFoundModel(CheXFoundConfig.from_preset("tiny", patch_size=4))
    renames = {"reg_token": "register_tokens", "mlp.fc1": "mlp.w12", "mlp.fc2": "mlp.w3"}
    teacher = {}
    for key, value in model.state_dict().items():
        key = key[len("vit."):]
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.0.{index}." + key.split(".", 2)[2]  # block_chunks: one chunk
        teacher[f"backbone.{key}"] = value.clone()
    heads = {"dino_head": DINOHead(32, 256, 64, 32), "ibot_head": DINOHead(32, 256, 64, 32)}
    for name, head in heads.items():
        if name == "ibot_head" and not with_ibot:
            continue
        with torch.no_grad():
            head.last_layer.weight_g.fill_(0.7)
        teacher.update({f"{name}.{k}": v for k, v in head.state_dict().items()})
    return {"teacher": teacher}


def test_continue_from_converted_official_checkpoint(tmp_path, caplog):
    torch.save(official_teacher_checkpoint(), tmp_path / "teacher_checkpoint.pth")
    folder = convert_chexfound_file(tmp_path / "teacher_checkpoint.pth", tmp_path / "converted")
    argv = ["--config", "training/configs/pretrain_chexfound_tiny.yaml", "--output_dir", str(tmp_path / "run"),
            "--init_from", str(folder), "--phantom_num_images", "40", "--batch_size", "8", "--max_steps", "2",
            "--logging_steps", "1"]
    with caplog.at_level(logging.WARNING):
        student = build_student(parse_args(PretrainArguments, argv))
    assert "initialised from scratch" not in caplog.text
    assert torch.all(student.dino_head.last_layer.weight_g == 0.7) and torch.all(student.ibot_head.last_layer.weight_g == 0.7)
    summary = main(argv)
    assert len(summary["history"]) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"])


def test_missing_ibot_head_is_initialised_and_logged(tmp_path, caplog):
    torch.save(official_teacher_checkpoint(with_ibot=False), tmp_path / "teacher_checkpoint.pth")
    folder = convert_chexfound_file(tmp_path / "teacher_checkpoint.pth", tmp_path / "converted")
    argv = ["--config", "training/configs/pretrain_chexfound_tiny.yaml", "--output_dir", str(tmp_path / "run"),
            "--init_from", str(folder)]
    with caplog.at_level(logging.WARNING, logger="cxrfm.training.pretrain_chexfound"):
        student = build_student(parse_args(PretrainArguments, argv))
    assert "no ibot_head.* tensors" in caplog.text and "no dino_head" not in caplog.text
    assert torch.all(student.ibot_head.last_layer.weight_g == 1.0)  # fresh head

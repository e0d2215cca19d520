"""CheXFound pretraining recipe: exact resume, export, resolution stages, continuation from released layouts."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cxrfm.contract import check_folder
from cxrfm.modeling.chexfound import CheXFoundModel
from cxrfm.training.losses.dino_ibot_objective import SSLSchedules, build_param_groups
from cxrfm.training.pretrain_chexfound import PretrainArguments, build_student, main, scaled_lr
from cxrfm.training.recipe import parse_args

TINY = "training/configs/pretrain_chexfound_tiny.yaml"
SMALL = ["--phantom_num_images", "80", "--batch_size", "8", "--logging_steps", "1", "--checkpointing_steps", "3"]


def run(output_dir, *extra):
    return main(["--config", TINY, "--output_dir", str(output_dir), *SMALL, *extra])


def test_interrupted_run_resumes_exactly(tmp_path):
    full = run(tmp_path / "full", "--max_steps", "6", "--export", "false")
    first = run(tmp_path / "cut", "--max_steps", "3", "--export", "false")
    resumed = run(tmp_path / "cut", "--max_steps", "6", "--export", "false")
    assert resumed["resumed_from"].endswith("checkpoint_0")
    assert [h["step"] for h in resumed["history"]] == [4, 5, 6]
    assert first["history"] == full["history"][:3]
    for got, want in zip(resumed["history"], full["history"][3:]):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    for got, want in zip(resumed["teacher"].state_dict().values(), full["teacher"].state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # the losses moved: the check above compares steps that differ from each other
    assert len({round(h["loss"], 6) for h in full["history"]}) == 6


def test_export_is_a_model_folder_with_heads_and_next_stage_starts_from_it(tmp_path):
    summary = run(tmp_path / "stage1", "--max_steps", "2")
    export = tmp_path / "stage1" / "teacher"
    teacher = summary["teacher"]
    model = CheXFoundModel.from_pretrained(export).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).last_hidden_state, teacher.backbone(pixels).last_hidden_state)
    heads = load_file(str(export / "ssl_heads.safetensors"))
    assert heads["dino_head.last_layer.weight_v"].shape == (256, 32)
    assert heads["ibot_head.mlp.0.weight"].shape == (64, 32)
    assert check_folder(export) == []  # the family contract: loads and runs where cxrfm is not installed
    # results.json and the card: the training summary (no evaluation, so no metrics table and no bootstrap)
    results = json.loads((export / "results.json").read_text())
    assert results["steps"] == 2 and results["num_images"] == 64  # the train split of 80 phantom images
    assert results["final_loss"] == pytest.approx(summary["history"][-1]["loss"])
    card = (export / "README.md").read_text()
    assert "final_loss" in card and "bootstrap" not in card and "AUROC" not in card

    # next resolution stage (48 px): official re-initialised pos-embed, or interpolated by option
    for mode in ("reinit", "interpolate"):
        args = parse_args(PretrainArguments, ["--config", TINY, "--output_dir", str(tmp_path / mode), "--init_from",
                                              str(export), "--global_crops_size", "48", "--pos_embed_init", mode])
        student = build_student(args)
        assert student.backbone.vit.pos_embed.shape == (1, 1 + 12 * 12, 32)
        torch.testing.assert_close(student.backbone.vit.blocks[1].mlp.fc2.weight, model.vit.blocks[1].mlp.fc2.weight)
        torch.testing.assert_close(student.dino_head.last_layer.weight_v, heads["dino_head.last_layer.weight_v"])
        if mode == "interpolate":
            from cxrfm.modeling.chexfound.modeling_chexfound import interpolate_patch_pos_embed

            expected = interpolate_patch_pos_embed(model.vit.pos_embed[:, 1:], (12, 12), 0.0, False)
            torch.testing.assert_close(student.backbone.vit.pos_embed[:, 1:].detach(), expected)
        else:  # fresh trunc-normal(0.02), not the interpolated values
            assert student.backbone.vit.pos_embed.std().item() == pytest.approx(0.02, rel=0.2)
    stage2 = run(tmp_path / "stage2", "--init_from", str(export), "--global_crops_size", "48", "--max_steps", "2",
                 "--export", "false")
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in stage2["history"])


def test_param_groups_and_lr_scaling():
    args = parse_args(PretrainArguments, ["--config", TINY, "--output_dir", "unused", "--layerwise_decay", "0.5"])
    student = build_student(args)
    groups = build_param_groups(student, 2, 0.5, 0.2)
    by_name = {id(p): g for g in groups for p in g["params"]}
    named = dict(student.named_parameters())
    assert by_name[id(named["backbone.vit.patch_embed.proj.weight"])]["lr_multiplier"] == pytest.approx(0.5**3 * 0.2)
    assert by_name[id(named["backbone.vit.blocks.0.attn.qkv.weight"])]["lr_multiplier"] == pytest.approx(0.5**2)
    assert by_name[id(named["backbone.vit.blocks.1.ls1.gamma"])]["wd_multiplier"] == 0.0
    assert by_name[id(named["backbone.vit.norm.weight"])]["wd_multiplier"] == 0.0
    assert by_name[id(named["dino_head.mlp.0.weight"])]["lr_multiplier"] == 1.0
    assert by_name[id(named["dino_head.last_layer.weight_g"])]["is_last_layer"]
    # official 512 stage: 8 GPUs x 10 -> 2e-4 * sqrt(80 / 1024)
    paper = parse_args(PretrainArguments, ["--output_dir", "x", "--batch_size", "80"])
    assert scaled_lr(paper) == pytest.approx(5.59e-5, rel=1e-3)
    # last-layer lr: 0 for freeze_last_layer_epochs, then the lr schedule (joining it mid-warm-up)
    schedules = SSLSchedules.build(4, 3, 1.0, 0.0, 2, 0.04, 0.2, 0.994, 1.0, 0.07, 0.04, 1, 1)
    assert [schedules.last_layer_lr[i] for i in range(6)] == [0, 0, 0, 0] + [schedules.lr[4], schedules.lr[5]]
    assert 0 < schedules.lr[4] < 1.0 and schedules.lr[7] == 1.0  # still warming up at epoch 1, peak at its end
    with pytest.raises(ValueError, match="clip_grad"):
        PretrainArguments(output_dir="x", max_grad_norm=1.0)
    with pytest.raises(ValueError, match="pos_embed_init"):
        PretrainArguments(output_dir="x", pos_embed_init="zeros")


@pytest.mark.parametrize(
    "stage, global_size, local_size, per_gpu, init_from",
    [("224", 224, 96, 38, None), ("336", 336, 128, 12, "224"), ("448", 448, 128, 14, "336"), ("512", 512, 144, 10, "448")],
)
def test_paper_presets_follow_the_official_crop_batch_table(stage, global_size, local_size, per_gpu, init_from):
    args = parse_args(PretrainArguments, ["--config", f"training/configs/pretrain_chexfound_vitl16_{stage}.yaml"])
    assert (args.global_crops_size, args.local_crops_size, args.batch_size) == (global_size, local_size, 8 * per_gpu)
    assert args.koleo_group_size == per_gpu and args.local_crops_number == 8
    assert (args.init_from is None) == (init_from is None)
    if init_from:
        assert args.init_from.endswith(f"vitl16_{init_from}/teacher") and args.pos_embed_init == "reinit"
    assert (args.dino_n_prototypes, args.dino_bottleneck_dim, args.ibot_n_prototypes, args.ibot_bottleneck_dim) == (
        131072, 384, 131072, 256)
    assert (args.ibot_loss_weight, args.koleo_loss_weight, args.centering, args.blur_as_intended) == (
        3.0, 0.1, "sinkhorn_knopp", False)
    assert (args.momentum_teacher, args.weight_decay_end, args.drop_path_rate, args.epoch_length) == (0.994, 0.2, 0.4, 2500)


def test_gradient_checkpointing_and_single_call_give_the_same_losses(tmp_path):
    # drop path off: one padded call draws its per-sample drop masks over a different batch shape
    base = ["--max_steps", "2", "--export", "false", "--phantom_num_images", "40", "--drop_path_rate", "0.0"]
    plain = run(tmp_path / "plain", *base)["history"]
    checkpointed = run(tmp_path / "ckpt", *base, "--gradient_checkpointing", "true")["history"]
    single_call = run(tmp_path / "single", *base, "--student_single_call", "true")["history"]
    for other in (checkpointed, single_call):
        for got, want in zip(other, plain):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5)

"""finetune_clip --objective cml: presets from YAML, meta-label text, the plateau schedule, tiny runs of both presets."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cxrfm.training.cml_objective import CMLConfig, CMLObjective
from cxrfm.training.finetune_clip import FinetuneCLIPArguments, ImageReportCollator, parse_args, train
from cxrfm.training.recipe import BatchGenerators
from recipe_interrupt import run_killed_at_step

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_paper_yaml_holds_the_papers_settings():
    args = parse_args(["--config", str(CONFIGS / "finetune_clip_cml_paper.yaml"), "--data_root", "/d"])
    assert (args.objective, args.cml_preset, args.batch_size, args.learning_rate, args.image_size) == ("cml", "paper", 32, 1e-6, 224)
    assert (args.cml_plateau_factor, args.cml_plateau_patience, args.meta_label_text, args.relax) == (0.1, 2, True, False)
    assert len(args.validation_labels) == 40
    config = args.cml_config(args.seed)
    assert (config.nu, config.n_components, config.fit_on, config.init, config.weight) == (4.0, 40, "epoch", "gmm", 1.0)
    official = parse_args(["--config", str(CONFIGS / "finetune_clip_cml_paper.yaml"), "--cml_preset", "official"])
    assert (official.cml_config(0).procedure, official.cml_config(0).nu) == ("official", 8.0)
    with pytest.raises(ValueError, match="cml_preset"):
        FinetuneCLIPArguments(output_dir="o", objective="cml", cml_preset="batch")


def test_meta_label_text_replaces_the_report():
    captured = {}

    def processor(images, text, return_tensors):
        captured["text"] = text
        return {"pixel_values": torch.zeros(len(images), 3, 4, 4), "input_ids": torch.zeros(len(text), 2)}

    processor.image_processor = SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    args = SimpleNamespace(meta_label_text=True, sentence_sampling=True, num_sentences=1, weak_augmentation=False,
                           objective="cml")
    collator = ImageReportCollator(processor, args, BatchGenerators(numpy=np.random.default_rng(0), torch=torch.Generator()),
                                   label_names=["Adenopathy", "Edema", "Pleural Effusion"])
    rows = [{"image": None, "report": "FINDINGS: Heart is big.", "labels": [1.0, 0.0, 1.0]},
            {"image": None, "report": "FINDINGS: Clear.", "labels": [0.0, float("nan"), 0.0]}]
    collator(rows)
    assert captured["text"] == ["adenopathy is present, pleural effusion is present", ""]


def test_plateau_divides_the_rate_after_patience_epochs_without_improvement():
    parameter = torch.nn.Parameter(torch.zeros(2))
    loop = SimpleNamespace(optimizer=torch.optim.SGD([parameter], lr=1.0),
                           accelerator=SimpleNamespace(reduce=lambda tensor, reduction: tensor, device="cpu"))
    losses = iter([3.0, 2.0, 2.5, 2.5, 2.5])  # epoch means: improves once, then flat

    def contrastive(model, batch):
        value = torch.tensor(next(losses))
        return {"clip_loss": value}, torch.randn(4, 3), torch.randn(4, 3)

    objective = CMLObjective(CMLConfig(fit_on="batch", n_components=2, weight=0.0), contrastive, plateau=(0.1, 1))
    objective.on_train_start(loop)
    rates = []
    for epoch in range(5):
        objective.on_epoch_start(loop, epoch)
        rates.append(loop.optimizer.param_groups[0]["lr"])
        objective.compute_loss(None, None)
    # plateau sees 3.0 (best), 2.0 (best), 2.5 (1 bad epoch = patience), 2.5 (2 > patience: x 0.1)
    assert rates == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1])
    state = objective.state_dict()
    assert state["plateau"]["num_bad_epochs"] == 0 and float(state["epoch_loss"][1]) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "official"])
def test_tiny_run_of_each_preset(tmp_path, preset):
    args = parse_args([
        "--config", str(CONFIGS / "finetune_clip_cml_tiny.yaml"), "--output_dir", str(tmp_path), "--cml_preset", preset,
        "--phantom_num_images", "160", "--batch_size", "16", "--num_epochs", "2", "--logging_steps", "1",
        "--validation_labels", "Support Devices", "Pleural Effusion", "--meta_label_text", str(preset == "official"),
    ])
    summary = train(args)
    history = summary["history"]
    assert len(history) >= 10 and all({"clip_loss", "metric_loss"} <= set(record) for record in history)
    assert all(math.isfinite(record["loss"]) for record in history)
    metric = [record["metric_loss"] for record in history]
    if preset == "paper":  # K = 8: the bank reaches 4 K = 32 embeddings after two batches of 16, then triplets
        assert metric[0] == 0.0 and max(metric[2:]) > 0
    assert len(summary["validation_auroc"]) == 2 and all(0 <= score <= 1 for _, score in summary["validation_auroc"])
    for kept, score in summary["checkpoints"]:  # each kept folder: its results and a CXR-CML card (no bootstrap)
        results = json.loads((Path(kept) / "results.json").read_text())
        assert results["validation"]["macro"]["auroc"] == pytest.approx(score)
        card = (Path(kept) / "README.md").read_text()
        assert "arXiv:2507.19398" in card and "(0 bootstrap resamples)" in card  # the CXR-CML paper is cited


@pytest.mark.slow
def test_interrupted_cml_run_resumes_to_the_same_losses(tmp_path):
    """Paper preset, killed at step 5 of 14 (epoch 1 of 2; checkpoints every 2 steps): the rerun restores the
    memory bank, the mixture's fit counter and the plateau state, refits at the epoch boundary as the uninterrupted
    run does, and repeats its per-step CLIP and metric losses exactly."""
    def argv(output):
        return ["--config", str(CONFIGS / "finetune_clip_cml_tiny.yaml"), "--output_dir", str(tmp_path / output),
                "--phantom_num_images", "160", "--batch_size", "16", "--num_epochs", "2", "--logging_steps", "1",
                "--checkpointing_steps", "2", "--validation_labels", "Support Devices", "Pleural Effusion"]

    full = train(parse_args(argv("full")))
    assert [r["step"] for r in full["history"]] == list(range(1, 15))
    assert max(r["metric_loss"] for r in full["history"][7:]) > 0  # the refitted mixture gives triplets in epoch 2

    run_killed_at_step(CMLObjective, 5, train, parse_args(argv("cut")))
    resumed = train(parse_args(argv("cut")))
    assert resumed["resumed_from"].endswith("checkpoint_1")  # step 4
    expected = {r["step"]: r for r in full["history"]}
    assert [r["step"] for r in resumed["history"]] == list(range(5, 15))
    for record in resumed["history"]:
        assert record == expected[record["step"]]
    assert resumed["validation_auroc"] == full["validation_auroc"]

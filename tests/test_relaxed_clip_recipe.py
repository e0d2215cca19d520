"""The relaxed-CLIP fine-tuning recipe: configs, collator views, loss terms per objective, a tiny end-to-end run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from cxrfm.modeling.relaxed_clip import RelaxedCLIPModel, clip_loss
from cxrfm.training.recipe import BatchGenerators
from cxrfm.training.finetune_clip import (
    ContrastiveObjective,
    FinetuneCLIPArguments,
    ImageReportCollator,
    build_model_and_tokenizer,
    compute_losses,
    parse_args,
    train,
)
from cxrfm.processing.image_processing_cxr import CXRImageProcessor
from cxrfm.processing.processing_clip import CXRCLIPProcessor
from recipe_interrupt import run_killed_at_step

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
REPORT = (
    "FINDINGS: Heart size is enlarged. There is a small left pleural effusion. No pneumothorax. Lungs are clear.\n\n"
    "IMPRESSION: Cardiomegaly. Small effusion."
)


def test_paper_config_holds_the_papers_settings():
    args = parse_args(["--config", str(CONFIGS / "finetune_clip_paper.yaml"), "--data_root", "/d", "--reports_root", "/r"])
    assert (args.batch_size, args.learning_rate, args.warmup_steps, args.num_epochs, args.image_size) == (1024, 1e-4, 100, 50, 224)
    assert (args.num_sentences, args.relax_threshold, args.relax_alpha, args.relax) == (3, 0.5, 10.0, True)
    assert args.validation_labels == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def test_cli_overrides_yaml_and_unknown_keys_fail(tmp_path):
    args = parse_args(["--config", str(CONFIGS / "finetune_clip_tiny.yaml"), "--objective", "uniclip", "--relax", "false"])
    assert args.objective == "uniclip" and args.relax is False and args.dataset == "phantom"
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: clip\nlerning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown keys \['lerning_rate'\]"):
        parse_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="objective must be one of"):
        FinetuneCLIPArguments(output_dir="o", objective="simclr")
    with pytest.raises(ValueError, match="data_root"):
        FinetuneCLIPArguments(output_dir="o", dataset="mimic-cxr")


@pytest.fixture(scope="module")
def tiny_setup():
    args = parse_args(["--config", str(CONFIGS / "finetune_clip_tiny.yaml")])
    model, tokenizer = build_model_and_tokenizer(args)
    image_processor = CXRImageProcessor(size=32, crop_size=32, image_mean=args.image_mean, image_std=args.image_std)
    # eval: the BERT tower's dropout would make two forward passes differ
    return args, model.eval(), CXRCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.mark.parametrize(
    "objective, views, terms",
    [
        ("clip", {"pixel_values"}, {"clip_loss"}),
        ("slip", {"pixel_values", "strong_pixel_values_a", "strong_pixel_values_b"}, {"clip_loss", "ssl_loss"}),
        ("uniclip", {"pixel_values", "weak_pixel_values"}, {"uniclip_loss"}),
    ],
)
def test_collator_views_and_loss_terms(tiny_setup, objective, views, terms):
    args, model, processor = tiny_setup
    args = FinetuneCLIPArguments(**{**args.__dict__, "objective": objective})
    rng = np.random.default_rng(0)
    rows = [{"image": rng.integers(0, 256, (40, 40), dtype=np.uint8), "report": REPORT} for _ in range(4)]
    generators = BatchGenerators(numpy=np.random.default_rng(0), torch=torch.Generator().manual_seed(0))
    collator = ImageReportCollator(processor, args, generators)
    batch = collator(rows)
    assert {key for key in batch if "pixel" in key} == views
    assert all(batch[view].shape == (4, 3, 32, 32) for view in views)
    # 3 sampled sentences of FINDINGS + IMPRESSION per report
    decoded = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert decoded.count(".") == 3 and "indication" not in decoded
    losses = compute_losses(model, batch, args, rank=0)
    assert set(losses) == terms and all(torch.isfinite(v) for v in losses.values())
    if objective == "clip":
        out = model(**batch)
        expected = clip_loss(out.image_embeds, out.text_embeds, model.temperature(), relax=True)
        torch.testing.assert_close(losses["clip_loss"], expected)


@pytest.mark.slow
def test_tiny_run_with_lora_keeps_best_checkpoints(tmp_path):
    args = parse_args([
        "--config", str(CONFIGS / "finetune_clip_tiny.yaml"), "--output_dir", str(tmp_path), "--objective", "slip",
        "--phantom_num_images", "160", "--batch_size", "16", "--num_epochs", "2",
        "--lora", "true", "--keep_best_checkpoints", "1", "--validation_labels", "Support Devices", "Pleural Effusion",
    ])
    summary = train(args)
    assert len(summary["validation_auroc"]) == 2
    assert all(0.0 <= score <= 1.0 for _, score in summary["validation_auroc"])
    assert all(math.isfinite(record["loss"]) for record in summary["history"])
    (kept, score), = summary["checkpoints"]
    assert score == max(score for _, score in summary["validation_auroc"])
    assert json.loads((tmp_path / "selection.json").read_text())["checkpoints"][0][0] == kept
    model = RelaxedCLIPModel.from_pretrained(kept)  # merged LoRA weights
    assert type(AutoProcessor.from_pretrained(kept)) is CXRCLIPProcessor
    assert (Path(kept) / "adapter" / "adapter_config.json").is_file()
    assert model.config.relax_positives
    # The kept folder carries its own validation results and card; the selection used no bootstrap, and says so.
    results = json.loads((Path(kept) / "results.json").read_text())
    assert results["validation"]["macro"]["auroc"] == pytest.approx(score) and results["objective"] == "slip"
    card = (Path(kept) / "README.md").read_text()
    assert "(0 bootstrap resamples)" in card and "arXiv:2507.19398" not in card  # not cited as a CML model


def reference_clip_loss(image_embeds, text_embeds, temperature, threshold, alpha) -> float:
    """Eq. (2) with Eq. (3) on the positive pairs, written out in float64 numpy (independent of the package)."""
    u = image_embeds.detach().double().numpy()
    v = text_embeds.detach().double().numpy()
    u, v = u / np.linalg.norm(u, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)
    cosine = u @ v.T
    x = np.diag(cosine).copy()
    relaxed = np.where(x >= threshold, 1 / (1 + np.exp(-alpha * (x - threshold))), np.where(x >= 0, x / (2 * threshold), x))
    np.fill_diagonal(cosine, relaxed)
    logits = cosine / float(temperature)

    def cross_entropy(rows):
        rows = rows - rows.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(rows).sum(axis=1)) - np.diag(rows)))

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def _tiny_batch(args, tokenizer):
    image_processor = CXRImageProcessor(size=32, crop_size=32, image_mean=args.image_mean, image_std=args.image_std)
    processor = CXRCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    rows = [{"image": rng.integers(0, 256, (40, 40), dtype=np.uint8), "report": REPORT} for _ in range(6)]
    generators = BatchGenerators(numpy=np.random.default_rng(0), torch=torch.Generator().manual_seed(0))
    return ImageReportCollator(processor, args, generators)(rows)


def test_non_default_threshold_and_alpha_reach_the_loss_from_the_yaml(tmp_path):
    """Test gap (issue 8, item 7): a non-default t and alpha set in a YAML file must reach the model's config, the
    model's own loss and the recipe's loss, and the loss must be Eq. (3) at THOSE values. t is placed between the
    positive pairs' cosines of this (seeded, random) model, so that both the sigmoid piece (alpha) and the linear
    piece (t) of Eq. (3) are in play; the guards below fail if the data stop exercising either."""
    text = (CONFIGS / "finetune_clip_tiny.yaml").read_text()
    assert "relax_threshold: 0.5\n" in text and "relax_alpha: 10.0\n" in text
    probe_args = parse_args(["--config", str(CONFIGS / "finetune_clip_tiny.yaml")])
    torch.manual_seed(0)
    probe, tokenizer = build_model_and_tokenizer(probe_args)
    with torch.no_grad():
        out = probe.eval()(**_tiny_batch(probe_args, tokenizer))
    positives = (out.image_embeds @ out.text_embeds.T).diag()
    assert positives.max() > 0, positives
    threshold, alpha = round(float(positives.max()) / 2, 4), 4.0
    config = tmp_path / "relax.yaml"
    config.write_text(text.replace("relax_threshold: 0.5\n", f"relax_threshold: {threshold}\n")
                      .replace("relax_alpha: 10.0\n", f"relax_alpha: {alpha}\n"))
    args = parse_args(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert (args.relax_threshold, args.relax_alpha) == (threshold, alpha) != (probe_args.relax_threshold, probe_args.relax_alpha)
    torch.manual_seed(0)  # the same weights as the probe: t and alpha change the loss only
    model, tokenizer = build_model_and_tokenizer(args)
    assert (model.config.relax_threshold, model.config.relax_alpha, model.config.relax_positives) == (threshold, alpha, True)
    model.eval()
    batch = _tiny_batch(args, tokenizer)
    with torch.no_grad():
        out = model(**batch, return_loss=True)
        temperature = model.temperature()
        expected = reference_clip_loss(out.image_embeds, out.text_embeds, temperature, threshold, alpha)
        for other in ((0.5, alpha), (threshold, 10.0), (0.5, 10.0)):  # the data tell t and alpha apart
            assert abs(expected - reference_clip_loss(out.image_embeds, out.text_embeds, temperature, *other)) > 2e-4
        assert out.loss.item() == pytest.approx(expected, rel=2e-6)  # the model reads its config, not fixed values
        recipe_terms = compute_losses(model, batch, args, rank=0)
        assert recipe_terms["clip_loss"].item() == pytest.approx(expected, rel=2e-6)


def test_interrupted_finetuning_resumes_to_the_same_losses(tmp_path):
    """Killed at step 9 of 12 (checkpoints every 2 steps), rerun with the same output_dir: steps 9-12 repeat the
    uninterrupted run's losses exactly (sentence sampling, augmentations, dropout, shuffling all restored), and so do
    the epoch-1 validation AUROC and the kept checkpoint. Non-default t / alpha reach the saved model."""
    def argv(output):
        return ["--config", str(CONFIGS / "finetune_clip_tiny.yaml"), "--output_dir", str(tmp_path / output),
                "--phantom_num_images", "60", "--batch_size", "8", "--num_epochs", "2", "--warmup_steps", "2",
                "--checkpointing_steps", "2", "--keep_best_checkpoints", "1", "--relax_threshold", "0.3",
                "--relax_alpha", "4", "--validation_labels", "Support Devices", "Pleural Effusion"]

    full = train(parse_args(argv("full")))
    assert [r["step"] for r in full["history"]] == list(range(1, 13))  # 48 training rows / 8 = 6 steps per epoch

    run_killed_at_step(ContrastiveObjective, 9, train, parse_args(argv("cut")))
    checkpoints = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_2", "checkpoint_3"]  # steps 6 and 8 (total limit 2)
    resumed = train(parse_args(argv("cut")))
    assert resumed["resumed_from"].endswith("checkpoint_3")
    expected = {r["step"]: r for r in full["history"]}
    assert [r["step"] for r in resumed["history"]] == [9, 10, 11, 12]
    for record in resumed["history"]:
        assert record == expected[record["step"]]
    assert resumed["validation_auroc"] == full["validation_auroc"][1:]
    assert [Path(p).name for p, _ in resumed["checkpoints"]] == [Path(p).name for p, _ in full["checkpoints"]]
    assert resumed["ensemble_auroc"] == full["ensemble_auroc"]
    saved = RelaxedCLIPModel.from_pretrained(resumed["checkpoints"][0][0]).config
    assert (saved.relax_threshold, saved.relax_alpha) == (0.3, 4.0)

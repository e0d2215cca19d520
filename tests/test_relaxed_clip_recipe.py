"""The relaxed-CLIP fine-tuning recipe: configs, collator views, loss terms per objective, a tiny end-to-end run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from cxrfm.modeling.relaxed_clip import RelaxedCLIPModel, clip_loss
from cxrfm.training.finetune_clip import (
    FinetuneCLIPArguments,
    ImageReportCollator,
    build_model_and_tokenizer,
    compute_losses,
    parse_args,
    train,
)
from cxrfm.processing.image_processing_cxr import CXRImageProcessor
from cxrfm.processing.processing_clip import CXRCLIPProcessor

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
        FinetuneCLIPArguments(objective="simclr")
    with pytest.raises(ValueError, match="data_root"):
        FinetuneCLIPArguments(dataset="mimic-cxr")


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
    collator = ImageReportCollator(processor, args, np.random.default_rng(0), torch.Generator().manual_seed(0))
    batch = collator(rows)
    assert {key for key in batch if "pixel" in key} == views
    assert all(batch[view].shape == (4, 3, 32, 32) for view in views)
    # 3 sampled sentences of FINDINGS + IMPRESSION per report
    decoded = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert decoded.count(".") == 3 and "indication" not in decoded
    losses = compute_losses(model, batch, args, model.temperature(), rank=0)
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
    assert all(math.isfinite(loss) for _, loss in summary["losses"])
    (kept, score), = summary["checkpoints"]
    assert score == max(score for _, score in summary["validation_auroc"])
    assert json.loads((tmp_path / "selection.json").read_text())["checkpoints"][0][0] == kept
    model = RelaxedCLIPModel.from_pretrained(kept)  # merged LoRA weights
    assert type(AutoProcessor.from_pretrained(kept)) is CXRCLIPProcessor
    assert (Path(kept) / "adapter" / "adapter_config.json").is_file()
    assert model.config.relax_positives

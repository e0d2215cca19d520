"""Dense transfer (issue 9): U-Net segmentation and RetinaNet detection on frozen cxrfm encoders, on the phantom set."""

import json

import numpy as np
import pytest
import torch

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.processing import CXRImageProcessor
from cxrfm.processing.datasets.phantom import load_phantom
from cxrfm.training.dense_encoders import load_frozen_encoder
from cxrfm.training.dense_transfer import select_fraction
from cxrfm.training.feature_cache import weights_fingerprint
from cxrfm.training.transfer_detection import PAPER_IOU_THRESHOLDS, mean_average_precision
from cxrfm.training.transfer_detection import main as detection_main
from cxrfm.training.transfer_segmentation import dice_from_counts
from cxrfm.training.transfer_segmentation import main as segmentation_main
from recipe_interrupt import run_killed_at_step

PHANTOM = ["--phantom_num_images", "200", "--image_size", "64", "--batch_size", "16", "--n_bootstrap", "50"]


@pytest.fixture(scope="module")
def chexfound_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chexfound")
    torch.manual_seed(0)
    config = CheXFoundConfig.from_preset("tiny", image_size=64, patch_size=8, num_hidden_layers=4)
    CheXFoundModel(config).save_pretrained(folder)
    CXRImageProcessor(size=64, crop_size=64).save_pretrained(folder)
    return folder


def _results(output_dir):
    return json.loads((output_dir / "results.json").read_text())


@pytest.mark.slow
def test_segmentation_learns_from_saved_chexfound_folder_and_encoder_stays_frozen(chexfound_folder, tmp_path):
    segmentation_main([
        "--encoder", str(chexfound_folder), "--output_dir", str(tmp_path), "--target_labels", "Cardiomegaly",
        "--num_epochs", "6", "--augment", "false", "--cache_features", "true", "--learning_rate", "3e-3",
        "--decoder_channels", "64", "32", "16", "16", "8", *PHANTOM,
    ])
    results = _results(tmp_path)
    trained, untrained = results["test"]["macro"], results["untrained_decoder"]["macro"]
    # clearly above the untrained decoder: the CIs do not overlap
    assert trained["ci"][0] > untrained["ci"][1], (trained, untrained)
    assert trained["dice"] > 0.2
    fingerprint = results["encoder_fingerprint"]
    assert fingerprint["before"] == fingerprint["after"] == weights_fingerprint(load_frozen_encoder(str(chexfound_folder)))
    assert "| Cardiomegaly |" in (tmp_path / "results.md").read_text()
    decoder = torch.load(tmp_path / "decoder.pt", weights_only=True)
    assert decoder and not any(key.startswith("encoder.") for key in decoder)


@pytest.mark.slow
def test_detection_learns_from_saved_chexfound_folder_and_encoder_stays_frozen(chexfound_folder, tmp_path):
    detection_main([
        "--encoder", str(chexfound_folder), "--output_dir", str(tmp_path), "--target_labels", "Cardiomegaly",
        "--num_epochs", "10", "--augment", "false", "--fpn_channels", "32", "--learning_rate", "3e-3", *PHANTOM,
    ])
    results = _results(tmp_path)
    trained, untrained = results["test"], results["untrained_head"]
    # clearly above the untrained head: the CIs do not overlap
    assert trained["ci"][0] > untrained["ci"][1], (trained, untrained)
    assert results["test"]["iou_thresholds"] == [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]
    fingerprint = results["encoder_fingerprint"]
    assert fingerprint["before"] == fingerprint["after"] == weights_fingerprint(load_frozen_encoder(str(chexfound_folder)))


@pytest.fixture(scope="module")
def mgca_resnet_folder(tmp_path_factory):
    from cxrfm.modeling.mgca import MGCAConfig, MGCAModel

    folder = tmp_path_factory.mktemp("mgca_resnet")
    torch.manual_seed(0)
    MGCAModel(MGCAConfig.from_preset("tiny-resnet")).save_pretrained(folder)
    CXRImageProcessor(size=64, crop_size=64).save_pretrained(folder)
    return folder


def test_mgca_resnet_folder_runs_both_protocols_with_augmentation_and_label_fraction(mgca_resnet_folder, tmp_path):
    """The paper's encoder family (MGCA ResNet-50 layout) and the non-default path: augmentation on, 10% of TRAIN."""
    common = ["--encoder", str(mgca_resnet_folder), "--target_labels", "Pleural Effusion", "Cardiomegaly",
              "--num_epochs", "1", "--train_fraction", "0.1", "--phantom_num_images", "80", "--image_size", "64",
              "--batch_size", "4", "--n_bootstrap", "5"]
    segmentation_main([*common, "--output_dir", str(tmp_path / "seg"), "--decoder_channels", "32", "16", "16", "8", "8"])
    detection_main([*common, "--output_dir", str(tmp_path / "det"), "--fpn_channels", "16"])
    num_train = len(load_phantom(num_images=80, image_size=64, seed=0)["train"])
    reference = weights_fingerprint(load_frozen_encoder(str(mgca_resnet_folder)))
    for name in ("seg", "det"):
        results = _results(tmp_path / name)
        assert results["encoder_kind"] == "cnn"
        assert results["num_train_images"] == round(0.1 * num_train)
        assert results["history"] and all(np.isfinite(h["loss"]) for h in results["history"])
        assert results["encoder_fingerprint"] == {"before": reference, "after": reference}
        assert results["arguments"]["augment"] is True and results["train_fraction"] == 0.1


def test_standard_mgca_resnet50_runs_as_smp_encoder_with_its_weights():
    from cxrfm.modeling.mgca import MGCAConfig, MGCAModel
    from cxrfm.training.dense_encoders import _mgca_encoder

    model = MGCAModel(MGCAConfig.from_preset("official-resnet50")).eval()
    encoder = _mgca_encoder(model, 4, [0.5] * 3, [0.5] * 3, "mgca")
    assert type(encoder.model).__module__.startswith("segmentation_models_pytorch")
    pixels = torch.randn(1, 3, 64, 64)
    for ours, timm_stage in zip(encoder(pixels), model.vision_model.forward_intermediates(pixels, intermediates_only=True)):
        assert torch.equal(ours, timm_stage)
    assert encoder.channels == [64, 256, 512, 1024, 2048]


def test_timm_name_and_shallow_vit_encoders():
    encoder = load_frozen_encoder("resnet18")
    assert encoder.kind == "cnn" and [f.shape[1] for f in encoder(torch.randn(1, 3, 64, 64))] == encoder.channels
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # frozen BatchNorm statistics even inside a model in train mode
    shallow = CheXFoundModel(CheXFoundConfig.from_preset("tiny"))
    from cxrfm.training.dense_encoders import CheXFoundEncoder

    with pytest.raises(ValueError, match="last 4 blocks, the encoder has 2"):
        CheXFoundEncoder(shallow, 4, [0.5] * 3, [0.5] * 3, "tiny")


def test_select_fraction_is_a_fixed_seed_subset():
    one_percent = select_fraction(1000, 0.01, seed=0)
    assert len(one_percent) == 10 and np.all(np.diff(one_percent) > 0)
    assert np.array_equal(one_percent, select_fraction(1000, 0.01, seed=0))
    assert not np.array_equal(one_percent, select_fraction(1000, 0.01, seed=1))
    assert len(select_fraction(50, 0.01, seed=0)) == 1  # never empty
    with pytest.raises(ValueError, match="train_fraction"):
        select_fraction(10, 0.0, seed=0)


def test_global_dice_from_counts_by_hand():
    # image 1: |P∩G| = 2, |P| + |G| = 5; image 2: 0 and 3 -> 2 * 2 / 8
    intersections, totals = np.array([[2.0], [0.0]]), np.array([[5.0], [3.0]])
    assert dice_from_counts(intersections, totals)[0] == pytest.approx(0.5)
    assert np.isnan(dice_from_counts(np.zeros((2, 1)), np.zeros((2, 1)))[0])


def test_map_over_paper_thresholds_counts_a_box_matched_at_iou_one_half():
    """IoU 0.5 exactly: a true positive at thresholds 0.40-0.50, a miss at 0.55-0.75 -> mAP = 3/8."""
    truth = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    predicted = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    assert PAPER_IOU_THRESHOLDS[3] == 0.55  # the paper's printed 0.65 read as 0.55
    assert mean_average_precision(predicted, truth) == pytest.approx(3 / 8, abs=1e-6)


def test_bad_inputs_name_the_problem(tmp_path, chexfound_folder):
    with pytest.raises(ValueError, match="no_such_model"):
        load_frozen_encoder(str(tmp_path / "no_such_model"))
    with pytest.raises(ValueError, match="Not A Finding"):
        segmentation_main(["--encoder", str(chexfound_folder), "--output_dir", str(tmp_path / "x"),
                           "--target_labels", "Not A Finding", "--phantom_num_images", "40", "--image_size", "64"])
    with pytest.raises(ValueError, match="cache_features needs augment: false"):
        segmentation_main(["--encoder", str(chexfound_folder), "--output_dir", str(tmp_path / "y"),
                           "--cache_features", "true"])


@pytest.mark.parametrize("name", ["transfer_segmentation_siim", "transfer_segmentation_rsna",
                                  "transfer_segmentation_phantom_tiny", "transfer_detection_object_cxr",
                                  "transfer_detection_rsna"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    from cxrfm.training.recipe import parse_args
    from cxrfm.training.transfer_detection import DetectionArguments
    from cxrfm.training.transfer_segmentation import SegmentationArguments

    import cxrfm.training

    config = Path(cxrfm.training.__file__).parent / "configs" / f"{name}.yaml"
    arguments_class = SegmentationArguments if "segmentation" in name else DetectionArguments
    args = parse_args(arguments_class, ["--config", str(config), "--encoder", "enc", "--output_dir", "out"])
    assert args.encoder == "enc" and args.target_labels
    with pytest.raises(ValueError, match="encoder"):
        parse_args(arguments_class, ["--config", str(config), "--output_dir", "out"])


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["segmentation", "detection"])
def test_interrupted_run_with_augmentation_resumes_to_the_same_losses(protocol, mgca_resnet_folder, tmp_path):
    """Killed at step 7 of 12 (epoch 2 of 3, checkpoints every 2 steps), the rerun restores the epoch the
    augmentations are drawn from, skips the batches already seen and repeats the uninterrupted per-step losses."""
    from cxrfm.training.transfer_detection import DetectionObjective
    from cxrfm.training.transfer_segmentation import SegmentationObjective

    main, objective = {"segmentation": (segmentation_main, SegmentationObjective),
                       "detection": (detection_main, DetectionObjective)}[protocol]
    head = ["--decoder_channels", "16", "8", "8", "8", "8"] if protocol == "segmentation" else ["--fpn_channels", "8"]

    def argv(output):
        return ["--encoder", str(mgca_resnet_folder), "--target_labels", "Cardiomegaly", "--num_epochs", "3",
                "--phantom_num_images", "40", "--image_size", "64", "--batch_size", "8", "--n_bootstrap", "5",
                "--checkpointing_steps", "2", "--augment", "true", "--output_dir", str(tmp_path / output), *head]

    main(argv("full"))
    full = _results(tmp_path / "full")["history"]
    assert [record["step"] for record in full] == list(range(1, 13))  # 32 training images / 8 = 4 steps per epoch

    run_killed_at_step(objective, 7, main, argv("cut"))
    main(argv("cut"))
    resumed = _results(tmp_path / "cut")
    expected = {record["step"]: record for record in full}
    assert [record["step"] for record in resumed["history"]] == list(range(7, 13))
    for record in resumed["history"]:
        assert record == expected[record["step"]]
    assert resumed["test"] == _results(tmp_path / "full")["test"]

"""Linear evaluation on frozen features (MGCA Sec. 4.2 protocol, shared with CheXFound): training fractions,
multi-label AUROC and single-label accuracy with bootstrap CIs, encoder features of both families, and the
command end to end on the phantom set."""

import json

import numpy as np
import pytest
import torch

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.modeling.mgca import MGCAConfig, MGCAModel
from cxrfm.training.linear_transfer import (
    accuracy_with_ci,
    encoder_features,
    linear_transfer,
    main,
    sample_fraction,
    train_linear_head,
)


def synthetic(n, seed, classes=3):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 8))
    weights = np.random.default_rng(100).normal(size=(8, classes))
    logits = features @ weights
    return features, (logits > 0).astype(float), logits.argmax(axis=1)


def test_sample_fraction_sizes_and_errors():
    assert [len(sample_fraction(200, f, seed=0)) for f in (0.01, 0.1, 1.0)] == [2, 20, 200]
    np.testing.assert_array_equal(sample_fraction(200, 0.1, 3), sample_fraction(200, 0.1, 3))
    assert len(sample_fraction(10, 0.01, 0)) == 1  # at least one row
    with pytest.raises(ValueError, match="fraction"):
        sample_fraction(10, 0.0, 0)


def test_linear_transfer_multilabel_and_multiclass_with_cis():
    train_x, train_multi, train_class = synthetic(600, 0)
    test_x, test_multi, test_class = synthetic(300, 1)
    train_multi[::7, 0] = np.nan  # unlabelled entries are ignored by the loss
    results = linear_transfer(
        (train_x, train_multi), (test_x, test_multi), True, (0.01, 1.0), n_bootstrap=100, epochs=20, learning_rate=1e-2
    )
    low, full = results[0.01], results[1.0]
    assert full["auroc"] > 0.95 and full["auroc_ci"][0] > 0.9
    assert full["auroc"] > low["auroc"]
    accuracy = linear_transfer(
        (train_x, train_class), (test_x, test_class), False, (1.0,), n_bootstrap=100, epochs=20, learning_rate=1e-2
    )[1.0]
    assert accuracy["accuracy"] > 0.85 and accuracy["accuracy_ci"][0] < accuracy["accuracy"] < accuracy["accuracy_ci"][1]


def test_accuracy_ci_hand_case():
    result = accuracy_with_ci(np.array([0, 1, 2, 1]), np.array([0, 1, 1, 1]), n_bootstrap=200)
    assert result["accuracy"] == 0.75 and 0.0 <= result["accuracy_ci"][0] <= 0.75 <= result["accuracy_ci"][1] <= 1.0


def test_validation_selects_the_lowest_loss_head():
    train_x, _, train_class = synthetic(200, 0)
    val_x, _, val_class = synthetic(100, 2)
    head = train_linear_head(train_x, train_class, False, epochs=5, validation=(val_x, val_class))
    assert isinstance(head, torch.nn.Linear) and head.out_features == 3


def test_encoder_features_of_both_families():
    pixel_values = torch.randn(2, 3, 32, 32)
    mgca = MGCAModel(MGCAConfig.from_preset("tiny"))
    with torch.no_grad():
        torch.testing.assert_close(encoder_features(mgca)(pixel_values), mgca.encode_image(pixel_values)[0])
        chexfound = CheXFoundModel(CheXFoundConfig.from_preset("tiny", patch_size=8))
        torch.testing.assert_close(encoder_features(chexfound)(pixel_values), chexfound(pixel_values=pixel_values).pooler_output)
    assert not any(p.requires_grad for p in mgca.parameters())


def test_command_on_phantom(tmp_path):
    folder = tmp_path / "mgca"
    MGCAModel(MGCAConfig.from_preset("tiny")).save_pretrained(folder)
    results = main([
        "--model_name_or_path", str(folder), "--dataset", "phantom", "--output_dir", str(tmp_path / "out"),
        "--image_size", "32", "--fractions", "0.1", "1.0", "--num_epochs", "2", "--n_bootstrap", "20",
        "--label_names", "Support Devices", "Pleural Effusion",
    ])
    assert set(results) == {0.1, 1.0}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["results"]["1.0"]["auroc_ci"] is not None and 0.0 <= saved["results"]["1.0"]["auroc"] <= 1.0


def test_command_preprocesses_with_the_model_folders_processor(tmp_path):
    """A folder saved with its image processor (here the official MGCA letterbox at 32 px) is evaluated with it;
    `--processor_from_model false` falls back to the shortest-edge resize of `image_size`."""
    from cxrfm.processing import CXRImageProcessor

    folder = tmp_path / "mgca"
    MGCAModel(MGCAConfig.from_preset("tiny")).save_pretrained(folder)
    CXRImageProcessor(size={"longest_edge": 36}, do_pad=True, pad_size=36, crop_size=32, do_minmax_rescale=False,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    common = ["--model_name_or_path", str(folder), "--dataset", "phantom", "--fractions", "1.0", "--num_epochs", "1",
              "--n_bootstrap", "5", "--label_names", "Support Devices"]
    main([*common, "--output_dir", str(tmp_path / "model")])
    used = json.loads((tmp_path / "model" / "results.json").read_text())["image_processor"]
    assert (used["do_pad"], used["size"]["longest_edge"], used["do_minmax_rescale"]) == (True, 36, False)
    main([*common, "--output_dir", str(tmp_path / "args"), "--processor_from_model", "false", "--image_size", "32"])
    used = json.loads((tmp_path / "args" / "results.json").read_text())["image_processor"]
    assert (used["do_pad"], used["size"]["shortest_edge"], used["do_minmax_rescale"]) == (False, 32, True)

"""Learning check: the tiny preset pretrained for 60 CPU steps on the phantom set gives better frozen features for
the phantom findings than the same backbone at random init (linear probe and k-NN, macro AUROC with bootstrap CIs)."""

import logging

import numpy as np
import torch
from accelerate.utils import set_seed
from datasets import concatenate_datasets
from sklearn.linear_model import LogisticRegression

from cxrfm.evaluation.metrics import multilabel_metrics
from cxrfm.processing.datasets import load_phantom
from cxrfm.training.pretrain_chexfound import (IMAGENET_MEAN, IMAGENET_STD, PretrainArguments, build_student,
                                               image_to_tensor, main)
from cxrfm.training.recipe import parse_args

logger = logging.getLogger(__name__)


def probe_split():
    """Frontal images of an independent phantom draw (seed 1), halved into probe-train / probe-test."""
    splits = load_phantom(1000, 64, seed=1)
    rows = concatenate_datasets([splits[name] for name in ("train", "validation", "test")])
    rows = rows.filter(lambda row: row["is_frontal"])
    half = len(rows) // 2
    return rows.select(range(half)), rows.select(range(half, len(rows)))


@torch.no_grad()
def features(model, rows):
    """Official linear-probe features at 64 px: [CLS] of the last 2 blocks + mean patch token of the last."""
    pixels = torch.stack([image_to_tensor(row["image"]) for row in rows]).expand(-1, 3, -1, -1)
    pixels = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    (patch_1, cls_1), (patch_2, cls_2) = model.eval().get_intermediate_layers(pixels, n=2)
    return torch.cat([cls_1, cls_2, patch_2.mean(1)], dim=1).numpy(), np.asarray(rows["labels"], dtype=float)


def evaluate(model, train_rows, test_rows):
    x_train, y_train = features(model, train_rows)
    x_test, y_test = features(model, test_rows)
    classes = [c for c in range(y_train.shape[1]) if min(y_train[:, c].sum(), y_test[:, c].sum()) >= 20]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    linear = np.stack([LogisticRegression(C=0.1, max_iter=500).fit(x_train, y_train[:, c]).decision_function(x_test)
                       for c in classes], axis=1)
    unit_train = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    unit_test = x_test / np.linalg.norm(x_test, axis=1, keepdims=True)
    neighbours = np.argsort(-(unit_test @ unit_train.T), axis=1)[:, :20]
    knn = y_train[:, classes][neighbours].mean(axis=1)
    results = {name: multilabel_metrics(y_test[:, classes], scores, n_bootstrap=200)["macro"]
               for name, scores in (("linear", linear), ("knn", knn))}
    return results, len(classes)


def test_pretraining_beats_random_init_on_phantom_findings(tmp_path):
    argv = ["--config", "training/configs/pretrain_chexfound_tiny.yaml", "--output_dir", str(tmp_path),
            "--max_steps", "60", "--logging_steps", "20", "--export", "false"]
    summary = main(argv)
    set_seed(0)  # the recipe's seed: the same initial weights the run started from
    random_init = build_student(parse_args(PretrainArguments, argv)).backbone
    train_rows, test_rows = probe_split()
    pretrained, n_classes = evaluate(summary["teacher"].backbone, train_rows, test_rows)
    baseline, _ = evaluate(random_init, train_rows, test_rows)
    logger.warning("phantom findings (%d classes, %d probe-test images): pretrained %s, random init %s",
                   n_classes, len(test_rows), pretrained, baseline)
    history = summary["history"]
    assert history[-1]["dino_global"] < history[0]["dino_global"]
    # linear probe: clearly above, the pretrained CI entirely above the random-init point estimate
    assert pretrained["linear"]["auroc"] > baseline["linear"]["auroc"] + 0.03
    assert pretrained["linear"]["auroc_ci"][0] > baseline["linear"]["auroc"]
    assert pretrained["knn"]["auroc"] > baseline["knn"]["auroc"]

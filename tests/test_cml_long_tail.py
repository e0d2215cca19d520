"""Base/rare long-tailed evaluation of CXR-CML: split from training counts, grouped macro AUROC, permutation test,
t-SNE PNG."""

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from cxrfm.evaluation.long_tail import base_rare_split, compare_long_tail, long_tail_metrics, summary_rows, tsne_plot

NAMES = ["Common", "Medium", "Rare A", "Rare B"]


def labels_with_counts(counts, n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, len(counts)))
    for c, count in enumerate(counts):
        labels[rng.choice(n, count, replace=False), c] = 1
    return labels


def test_split_comes_from_training_counts_and_threshold():
    train = labels_with_counts([300, 120, 9, 30])
    train[:5, 2] = np.nan  # unlabelled entries are not positives
    split = base_rare_split(train, NAMES, threshold=100)
    assert split["counts"] == {"Common": 300, "Medium": 120, "Rare A": int((train[:, 2] == 1).sum()), "Rare B": 30}
    assert split["base"] == ["Common", "Medium"] and split["rare"] == ["Rare A", "Rare B"]
    assert base_rare_split(train, NAMES, threshold=150)["rare"] == ["Medium", "Rare A", "Rare B"]
    with pytest.raises(ValueError, match="train_labels must be"):
        base_rare_split(train[:, :3], NAMES)


def test_group_macros_equal_sklearn_and_permutation_test():
    rng = np.random.default_rng(1)
    test = labels_with_counts([200, 100, 20, 40], n=400, seed=2)
    score_a = test * 0.8 + rng.random(test.shape)  # informative
    score_b = rng.random(test.shape)  # chance
    split = base_rare_split(labels_with_counts([300, 120, 9, 30]), NAMES, threshold=100)
    results = long_tail_metrics(test, score_a, NAMES, split, n_bootstrap=200)
    for group, columns in (("all", [0, 1, 2, 3]), ("base", [0, 1]), ("rare", [2, 3])):
        expected = np.mean([roc_auc_score(test[:, c], score_a[:, c]) for c in columns])
        macro = results[group]["macro"]
        assert macro["auroc"] == pytest.approx(expected, abs=1e-9)
        assert macro["auroc_ci"][0] < macro["auroc"] < macro["auroc_ci"][1]
    assert summary_rows(results)[2].startswith("rare  0.")
    comparison = compare_long_tail(test, score_a, score_b, NAMES, split, n_permutations=200)
    assert comparison["rare"]["auroc"]["delta"] > 0.2 and comparison["rare"]["auroc"]["p_value"] < 0.01
    same = compare_long_tail(test, score_a, score_a, NAMES, split, n_permutations=50)
    assert same["all"]["auroc"]["delta"] == 0.0 and same["all"]["auroc"]["p_value"] == 1.0


def test_tsne_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = labels_with_counts([30, 20, 4, 6], n=60)
    embeddings = rng.normal(size=(60, 16)) + labels @ rng.normal(size=(4, 16)) * 3
    split = base_rare_split(labels, NAMES, threshold=10)
    path = tsne_plot(embeddings, labels, NAMES, split, tmp_path / "plots" / "tsne.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500
    with pytest.raises(ValueError, match="same N"):
        tsne_plot(embeddings[:10], labels, NAMES, split, tmp_path / "x.png")

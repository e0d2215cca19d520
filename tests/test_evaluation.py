"""cxrfm.evaluation metrics, bootstrap CIs, permutation test, prevalence strata and the evaluate module."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrfm.evaluation import (
    bootstrap_indices,
    bootstrap_replicates,
    format_table,
    metric_path,
    multilabel_metrics,
    paired_permutation_test,
    percentile_interval,
    permutation_swaps,
    prevalence_strata,
    stratified_metrics,
)

SKLEARN = {"auroc": roc_auc_score, "auprc": average_precision_score}


def _tied_data(rng, n=300, n_classes=5):
    """Labels with NaN and -1 holes and coarse (heavily tied) scores that carry signal."""
    labels = (rng.random((n, n_classes)) < np.linspace(0.05, 0.5, n_classes)).astype(float)
    scores = np.round(rng.random((n, n_classes)) + 0.4 * labels, 1)
    labels[rng.random((n, n_classes)) < 0.1] = np.nan
    labels[rng.random((n, n_classes)) < 0.05] = -1
    return labels, scores


def _sklearn_per_class(labels, scores, metric):
    values = []
    for c in range(labels.shape[1]):
        keep = ~np.isnan(labels[:, c]) & (labels[:, c] != -1)
        values.append(SKLEARN[metric](labels[keep, c], scores[keep, c]))
    return np.array(values)


def test_hand_computed_example():
    # Ranking 1,0,1,0: AP = (1/1 + 2/3) / 2; AUROC = 3 of 4 positive-negative pairs ordered correctly.
    out = multilabel_metrics([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], n_bootstrap=0)
    assert out["per_class"]["class_0"]["auroc"] == pytest.approx(0.75, abs=1e-15)
    assert out["per_class"]["class_0"]["auprc"] == pytest.approx(5 / 6, abs=1e-15)
    assert out["macro"]["auroc_ci"] is None
    # A positive tied with a negative counts 1/2; AP sees one threshold holding both.
    out = multilabel_metrics([1, 0, 0], [0.5, 0.5, 0.1], n_bootstrap=0)
    assert out["per_class"]["class_0"]["auroc"] == pytest.approx(0.75, abs=1e-15)
    assert out["per_class"]["class_0"]["auprc"] == pytest.approx(0.5, abs=1e-15)


def test_point_and_every_replicate_equal_sklearn_with_ties_and_nans(rng):
    labels, scores = _tied_data(rng)
    reps = bootstrap_replicates(labels, scores, n_bootstrap=25, seed=7)
    for metric in ("auroc", "auprc"):
        np.testing.assert_allclose(reps[metric], _sklearn_per_class(labels, scores, metric), rtol=0, atol=1e-9)
        for b in range(25):
            idx = bootstrap_indices(labels.shape[0], 7, b)
            expected = _sklearn_per_class(labels[idx], scores[idx], metric)
            np.testing.assert_allclose(reps[f"{metric}_replicates"][b], expected, rtol=0, atol=1e-9)


def test_continuous_scores_match_sklearn_at_scale():
    rng = np.random.default_rng(3)
    labels = (rng.random((20_000, 3)) < [0.3, 0.02, 0.001]).astype(float)
    scores = rng.normal(size=labels.shape) + labels
    out = multilabel_metrics(labels, scores, n_bootstrap=0)
    for metric in ("auroc", "auprc"):
        got = [out["per_class"][f"class_{c}"][metric] for c in range(3)]
        np.testing.assert_allclose(got, _sklearn_per_class(labels, scores, metric), rtol=0, atol=1e-9)
        assert out["macro"][metric] == pytest.approx(np.mean(got), abs=1e-15)


def test_ci_contains_point_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)

    def sample(n):
        labels = (rng.random((n, 3)) < 0.2).astype(float)
        return labels, rng.normal(size=(n, 3)) + labels

    small_data = sample(200)
    small = multilabel_metrics(*small_data, n_bootstrap=200, seed=0)
    large = multilabel_metrics(*sample(5000), n_bootstrap=200, seed=0)
    for out in (small, large):
        for entry in [out["macro"], *out["per_class"].values()]:
            for metric in ("auroc", "auprc"):
                low, high = entry[f"{metric}_ci"]
                assert low <= entry[metric] <= high
    for metric in ("auroc", "auprc"):
        width = {name: np.diff(out["macro"][f"{metric}_ci"])[0] for name, out in (("small", small), ("large", large))}
        assert width["large"] < 0.5 * width["small"]
    # A 50% interval lies inside the 95% one (same data, same resamples).
    low50, high50 = multilabel_metrics(*small_data, n_bootstrap=200, seed=0, ci=0.5)["macro"]["auroc_ci"]
    low95, high95 = small["macro"]["auroc_ci"]
    assert low95 < low50 < high50 < high95


def test_seeded_determinism_and_resample_identity(rng):
    labels, scores = _tied_data(rng)
    first = multilabel_metrics(labels, scores, n_bootstrap=60, seed=11)
    again = multilabel_metrics(labels, scores, n_bootstrap=60, seed=11)
    other = multilabel_metrics(labels, scores, n_bootstrap=60, seed=12)
    assert first == again
    assert first["macro"]["auroc_ci"] != other["macro"]["auroc_ci"]
    # Resample b depends only on (seed, b): the first 20 of 60 equal a 20-resample run.
    short = bootstrap_replicates(labels, scores, n_bootstrap=20, seed=11)["auroc_replicates"]
    long = bootstrap_replicates(labels, scores, n_bootstrap=60, seed=11)["auroc_replicates"]
    np.testing.assert_array_equal(short, long[:20])


def test_undefined_classes_are_reported_not_averaged():
    rng = np.random.default_rng(5)
    n = 200
    labels = np.zeros((n, 4))
    labels[:, 0] = rng.random(n) < 0.3  # ordinary class
    labels[:, 1] = 0  # no positive at all
    labels[:, 2] = np.nan  # never labelled
    labels[:, 3] = 0
    labels[17, 3] = 1  # a single positive: undefined whenever image 17 is not drawn
    scores = rng.random((n, 4))
    out = multilabel_metrics(labels, scores, label_names=["a", "none", "unlabelled", "rare"], n_bootstrap=100)

    assert out["skipped_classes"] == {"none": "no positive labels", "unlabelled": "no labelled images"}
    assert out["per_class"]["none"]["auroc"] is None and out["per_class"]["none"]["auroc_ci"] is None
    assert out["macro"]["n_classes"] == 2
    expected_macro = np.mean([out["per_class"][name]["auroc"] for name in ("a", "rare")])
    assert out["macro"]["auroc"] == pytest.approx(expected_macro, abs=1e-15)

    not_drawn = sum(17 not in set(bootstrap_indices(n, 0, b)) for b in range(100))
    assert 10 < not_drawn < 70  # P(not drawn) = (1 - 1/200)^200 ~ 0.37
    assert out["per_class"]["rare"]["n_skipped_resamples"] == not_drawn
    assert out["per_class"]["a"]["n_skipped_resamples"] == 0
    assert out["macro"]["n_skipped_resamples"] == not_drawn
    for metric in ("auroc", "auprc"):
        low, high = out["macro"][f"{metric}_ci"]
        assert np.isfinite(low) and np.isfinite(high)
    assert "undefined" in "\n".join(format_table(out))


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        multilabel_metrics(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="0, 1, -1 or NaN"):
        multilabel_metrics([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        multilabel_metrics([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="label_names has 1 names"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)), label_names=["x"])
    with pytest.raises(ValueError, match="ci must be in"):
        multilabel_metrics([0, 1], [0.1, 0.2], ci=95)


def _reference_percentile(values, q):
    """Linear-interpolation percentile written out by hand: position q (n - 1) in the sorted values."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = int(np.floor(position))
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def test_percentile_interval_hand_computed():
    # Positions 0.1 * 4 = 0.4 and 0.9 * 4 = 3.6 between the sorted values 1..5.
    assert percentile_interval(np.array([5.0, 1.0, 4.0, 2.0, 3.0]), ci=0.8) == pytest.approx((1.4, 4.6), abs=1e-12)
    assert percentile_interval(np.array([1.0, np.nan, 3.0]), ci=0.5) == pytest.approx((1.5, 2.5), abs=1e-12)
    assert percentile_interval(np.array([np.nan]), ci=0.95) is None


@pytest.mark.parametrize("ci", [0.95, 0.8])
def test_ci_endpoints_equal_an_independent_bootstrap(ci):
    """Resamples drawn here with the documented generator (numpy default_rng((seed, b)), N draws from 0..N-1),
    scored by scikit-learn, cut by the hand-written percentile: catches a wrong quantile rule or resampler."""
    data = np.random.default_rng(42)
    n, n_classes, n_bootstrap, seed = 60, 2, 40, 9  # B = 40: every endpoint falls between two replicates
    labels = (data.random((n, n_classes)) < 0.4).astype(float)
    scores = data.normal(size=(n, n_classes)) + labels
    out = multilabel_metrics(labels, scores, label_names=["a", "b"], n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    replicates = {metric: [] for metric in ("auroc", "auprc")}
    for b in range(n_bootstrap):
        draw = np.random.default_rng((seed, b)).integers(0, n, size=n)
        for metric in replicates:
            replicates[metric].append(_sklearn_per_class(labels[draw], scores[draw], metric))
    q_low, q_high = (1 - ci) / 2, (1 + ci) / 2
    for metric, per_resample in replicates.items():
        per_resample = np.array(per_resample)  # (B, C); every class keeps positives and negatives here
        for c, name in enumerate(["a", "b"]):
            expected = (_reference_percentile(per_resample[:, c], q_low), _reference_percentile(per_resample[:, c], q_high))
            assert out["per_class"][name][f"{metric}_ci"] == pytest.approx(expected, abs=1e-12, rel=0)
        macro = per_resample.mean(axis=1)
        expected = (_reference_percentile(macro, q_low), _reference_percentile(macro, q_high))
        assert out["macro"][f"{metric}_ci"] == pytest.approx(expected, abs=1e-12, rel=0)


def test_resampling_draws_every_image_including_the_last():
    n, draws = 7, 3000
    counts = np.bincount(np.concatenate([bootstrap_indices(n, 3, b) for b in range(draws)]), minlength=n + 1)
    assert counts[n] == 0 and counts[:n].min() > 0
    # Each image is drawn with probability 1/n: within 5 standard deviations of n_draws / n.
    expected, sd = draws, np.sqrt(draws * n * (1 / n) * (1 - 1 / n))
    assert np.all(np.abs(counts[:n] - expected) < 5 * sd)
    # A class whose only positive is the last image is defined exactly in the resamples that draw it.
    m, n_bootstrap = 40, 300
    labels = np.zeros(m)
    labels[-1] = 1
    scores = np.random.default_rng(0).random(m)
    out = multilabel_metrics(labels, scores, n_bootstrap=n_bootstrap, seed=5)
    drawn = sum((m - 1) in set(np.random.default_rng((5, b)).integers(0, m, size=m)) for b in range(n_bootstrap))
    assert out["per_class"]["class_0"]["n_skipped_resamples"] == n_bootstrap - drawn
    assert 0.5 * n_bootstrap < drawn < 0.75 * n_bootstrap  # P(drawn) = 1 - (1 - 1/40)^40 = 0.64


def _naive_permutation_p(labels, score_a, score_b, n_permutations, seed, metric):
    """Reference: the scikit-learn loop over the same swaps."""

    def macro(a):
        return _sklearn_per_class(labels, a, metric).mean()

    observed = macro(score_a) - macro(score_b)
    extreme = 0
    for k in range(n_permutations):
        swap = permutation_swaps(labels.shape[0], seed, k)[:, None]
        delta = macro(np.where(swap, score_b, score_a)) - macro(np.where(swap, score_a, score_b))
        extreme += abs(delta) >= abs(observed) - 1e-12
    return observed, (1 + extreme) / (1 + n_permutations)


def test_permutation_test_matches_reference_loop(rng):
    labels, score_a = _tied_data(rng, n=150, n_classes=3)
    score_b = np.round(rng.random(score_a.shape) + 0.3 * np.nan_to_num(labels).clip(0), 1)
    out = paired_permutation_test(labels, score_a, score_b, n_permutations=40, seed=2)
    for metric in ("auroc", "auprc"):
        delta, p_value = _naive_permutation_p(labels, score_a, score_b, 40, 2, metric)
        assert out[metric]["delta"] == pytest.approx(delta, abs=1e-12)
        assert out[metric]["p_value"] == p_value


def test_permutation_identical_models_and_clearly_better_model():
    rng = np.random.default_rng(9)
    labels = (rng.random((400, 4)) < 0.3).astype(float)
    noise = rng.normal(size=labels.shape)
    weak = noise + 0.2 * labels
    same = paired_permutation_test(labels, weak, weak.copy(), n_permutations=200)
    assert same == {"auroc": {"delta": 0.0, "p_value": 1.0}, "auprc": {"delta": 0.0, "p_value": 1.0}}
    strong = noise + 2.0 * labels
    better = paired_permutation_test(labels, strong, weak, n_permutations=200, metrics=("auroc",))
    assert set(better) == {"auroc"}
    assert better["auroc"]["delta"] > 0.2
    assert better["auroc"]["p_value"] == 1 / 201  # +1 correction: the smallest reachable p
    with pytest.raises(ValueError, match="subset of"):
        paired_permutation_test(labels, strong, weak, metrics=("f1",))


def test_prevalence_strata_and_stratified_metrics():
    np.testing.assert_array_equal(prevalence_strata([0.2, 0.05, 0.001, 0.1, 0.01])["high"], [0, 3])
    np.testing.assert_array_equal(prevalence_strata([0.2, 0.05, 0.001, 0.1, 0.01])["medium"], [1, 4])
    np.testing.assert_array_equal(prevalence_strata([0.2, 0.05, 0.001, 0.1, 0.01])["low"], [2])
    with pytest.raises(ValueError, match="low <= high"):
        prevalence_strata([0.1], high=0.01, low=0.1)

    rng = np.random.default_rng(4)
    prevalence = np.array([0.3, 0.15, 0.05, 0.03, 0.005])
    labels = (rng.random((4000, 5)) < prevalence).astype(float)
    scores = rng.normal(size=labels.shape) + labels
    names = ["A", "B", "C", "D", "E"]
    strata = stratified_metrics(labels, scores, names, high=0.1, low=0.01, n_bootstrap=50)
    assert [strata[s]["classes"] for s in ("high", "medium", "low")] == [["A", "B"], ["C", "D"], ["E"]]
    overall = multilabel_metrics(labels, scores, names, n_bootstrap=50)
    for stratum in ("high", "medium", "low"):
        expected = np.mean([overall["per_class"][name]["auprc"] for name in strata[stratum]["classes"]])
        assert strata[stratum]["auprc"] == pytest.approx(expected, abs=1e-15)
        low, high = strata[stratum]["auprc_ci"]
        assert low <= strata[stratum]["auprc"] <= high
    # A single-class stratum's interval is that class's interval (same resamples).
    assert strata["low"]["auprc_ci"] == pytest.approx(overall["per_class"]["E"]["auprc_ci"])
    # Prevalence given explicitly (e.g. from the training set) overrides the test-set one.
    flipped = stratified_metrics(labels, scores, names, prevalence=prevalence[::-1], n_bootstrap=0)
    assert flipped["high"]["classes"] == ["D", "E"]


def test_evaluate_module_loads_offline_and_matches():
    evaluate = pytest.importorskip("evaluate")
    rng = np.random.default_rng(6)
    labels, scores = _tied_data(rng, n=120, n_classes=3)
    metric = evaluate.load(metric_path("multilabel_auroc"))
    metric.add_batch(predictions=scores[:50], references=labels[:50])
    metric.add_batch(predictions=scores[50:], references=labels[50:])
    got = metric.compute(label_names=["x", "y", "z"], n_bootstrap=30, seed=1)
    assert got == multilabel_metrics(labels, scores, ["x", "y", "z"], n_bootstrap=30, seed=1)
    with pytest.raises(ValueError, match="Unknown evaluate module"):
        metric_path("accuracy")

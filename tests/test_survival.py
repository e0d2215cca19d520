"""cxrfm.evaluation.survival: risk groups, Kaplan-Meier estimates, log-rank tests, PNG + JSON outputs."""

import json

import numpy as np
import pytest

from cxrfm.evaluation import kaplan_meier_analysis, risk_groups

pytest.importorskip("lifelines")


def test_kaplan_meier_matches_hand_computation(tmp_path):
    # Group 0: deaths at 1, 2, 3, 5; censored at 2 (after the death at 2) and 4.
    # S(1) = 5/6, S(2) = 5/6 * 4/5, S(3) = S(2) * 2/3 (3 at risk), S(5) = 0 (1 at risk, 1 death).
    time = [1, 2, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6]
    event = [1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    groups = [0] * 6 + [1] * 6
    out = kaplan_meier_analysis(time, event, groups, tmp_path, times_at_risk=[0, 1, 2, 3, 4, 5])
    low = out["groups"]["low risk"]
    np.testing.assert_allclose(low["survival"], [1, 5 / 6, 4 / 6, 4 / 6 * 2 / 3, 4 / 6 * 2 / 3, 0], atol=1e-12)
    assert low["n_at_risk"] == [6, 6, 5, 3, 2, 1]
    assert (low["n"], low["n_events"], low["median_survival"]) == (6, 4, 3.0)
    high = out["groups"]["high risk"]
    assert high["n_events"] == 1 and high["survival"][:6] == [1.0] * 6
    for ci_low, s, ci_high in zip(low["survival_ci_low"], low["survival"], low["survival_ci_high"]):
        assert ci_low <= s + 1e-12 and s <= ci_high + 1e-12
    assert out["logrank"]["test"] == "logrank" and out["logrank"]["degrees_of_freedom"] == 1


def _exponential_cohort(rng, hazards, n_per_group, follow_up=10.0):
    """Exponential event times with administrative censoring at ``follow_up``."""
    times, events, groups = [], [], []
    for g, hazard in enumerate(hazards):
        t = rng.exponential(1.0 / hazard, n_per_group)
        times.append(np.minimum(t, follow_up))
        events.append((t <= follow_up).astype(int))
        groups.append(np.full(n_per_group, g))
    return np.concatenate(times), np.concatenate(events), np.concatenate(groups)


def test_logrank_separated_vs_identical_groups(tmp_path):
    rng = np.random.default_rng(0)
    separated = kaplan_meier_analysis(*_exponential_cohort(rng, [0.05, 0.5], 150), tmp_path / "a")
    assert separated["logrank"]["p_value"] < 1e-10
    assert separated["groups"]["high risk"]["end_survival"] < separated["groups"]["low risk"]["end_survival"]
    assert separated["groups"]["high risk"]["median_survival"] == pytest.approx(np.log(2) / 0.5, rel=0.3)

    identical = kaplan_meier_analysis(*_exponential_cohort(rng, [0.2, 0.2], 150), tmp_path / "b")
    assert identical["logrank"]["p_value"] > 0.05

    three = kaplan_meier_analysis(*_exponential_cohort(rng, [0.05, 0.2, 0.8], 80), tmp_path / "c")
    assert three["logrank"]["test"] == "multivariate_logrank"
    assert three["logrank"]["degrees_of_freedom"] == 2 and three["logrank"]["p_value"] < 1e-10
    assert list(three["groups"]) == ["low risk", "intermediate risk", "high risk"]


def test_outputs_written_and_reloadable(tmp_path):
    rng = np.random.default_rng(1)
    time, event, groups = _exponential_cohort(rng, [0.1, 0.3], 40)
    names = np.array(["never smoker", "smoker"])[groups]
    out = kaplan_meier_analysis(time, event, names, tmp_path / "km", filename="smoking", title="demo")
    png = (tmp_path / "km" / "smoking.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert json.loads((tmp_path / "km" / "smoking.json").read_text()) == json.loads(json.dumps(out))
    assert list(out["groups"]) == ["never smoker", "smoker"]


def test_risk_groups_from_scores_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    n = 400
    scores = rng.normal(size=n)
    hazard = 0.1 * np.exp(1.5 * scores)  # higher score = higher hazard
    t = rng.exponential(1.0 / hazard)
    time, event = np.minimum(t, 5.0), (t <= 5.0).astype(int)
    groups = risk_groups(scores)
    assert np.bincount(groups).tolist() == [200, 200]
    assert scores[groups == 1].min() > scores[groups == 0].max()
    out = kaplan_meier_analysis(time, event, groups, tmp_path)
    assert out["logrank"]["p_value"] < 1e-6
    assert out["groups"]["high risk"]["end_survival"] < out["groups"]["low risk"]["end_survival"]


def test_risk_group_rules_and_errors():
    scores = np.arange(10.0)
    np.testing.assert_array_equal(np.bincount(risk_groups(scores, n_groups=5)), [2, 2, 2, 2, 2])
    np.testing.assert_array_equal(risk_groups(scores, quantiles=[0.2]), [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    # A score equal to a cut point goes to the lower group.
    np.testing.assert_array_equal(risk_groups([1.0, 2.0, 3.0], thresholds=[2.0]), [0, 0, 1])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        risk_groups(scores, quantiles=[1.5])
    with pytest.raises(ValueError, match="empty"):
        risk_groups(np.ones(10))
    with pytest.raises(ValueError, match="finite"):
        risk_groups([0.1, np.nan])
    with pytest.raises(ValueError, match="event must be 0"):
        kaplan_meier_analysis([1, 2], [2, 0], [0, 1], "unused")
    with pytest.raises(ValueError, match="at least 2 groups"):
        kaplan_meier_analysis([1, 2], [1, 0], [0, 0], "unused")

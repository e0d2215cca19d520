"""Opportunistic risk: risk groups from predicted scores, Kaplan-Meier curves and log-rank tests (lifelines).

CheXFound (paper 001, Sec. V-B, Fig. 5) splits the PLCO test cohort into low- and high-risk groups "based on the
model prediction", draws Kaplan-Meier curves with 95% confidence bands, compares them with a log-rank test and
reports the end-point survival of each group (78.4% vs 38.4%). The official code only exports the per-image
probabilities (RPIDIAL/CheXFound `eval/classification/linear_glori.py`), so the split rule is an argument here: by default
the median of the scores (two groups); quantiles or fixed thresholds (e.g. taken from a validation set) give
more groups.

lifelines and matplotlib come with the ``train`` extra (``pip install cxrfm[train]``); they are imported when
:func:`kaplan_meier_analysis` runs. Plots use matplotlib's Agg canvas directly (no pyplot state, no display).
"""

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)


def risk_groups(
    scores,
    n_groups: int = 2,
    quantiles: Optional[Sequence[float]] = None,
    thresholds: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Assign each subject to a risk group by its predicted score (higher score = higher risk).

    Exactly one rule applies, in this order: ``thresholds`` (cut points on the score scale), ``quantiles`` (cut
    points as quantiles of ``scores``), else ``n_groups`` equal-size groups (2 = median split, the default).
    A score equal to a cut point goes to the lower group.

    Args:
        scores: (N,) predicted risk scores.
        n_groups: number of equal-frequency groups when neither ``quantiles`` nor ``thresholds`` is given.
        quantiles: increasing values in (0, 1), e.g. (1/3, 2/3) for tertiles.
        thresholds: increasing score cut points, e.g. quantiles of a validation set's scores.

    Returns:
        (N,) int64 group index, 0 = lowest risk ... k - 1 = highest risk.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError(f"scores must be a non-empty 1-D array of finite values; got shape {scores.shape}.")
    if thresholds is not None:
        cuts = np.asarray(thresholds, dtype=np.float64)
    else:
        if quantiles is None:
            if n_groups < 2:
                raise ValueError(f"n_groups must be >= 2; got {n_groups}.")
            quantiles = np.arange(1, n_groups) / n_groups
        quantiles = np.asarray(quantiles, dtype=np.float64)
        if np.any((quantiles <= 0) | (quantiles >= 1)):
            raise ValueError(f"quantiles must lie strictly between 0 and 1; got {quantiles.tolist()}.")
        cuts = np.quantile(scores, quantiles)
    if np.any(np.diff(cuts) <= 0):
        raise ValueError(f"Risk-group cut points must be strictly increasing; got {cuts.tolist()}.")
    groups = np.searchsorted(cuts, scores, side="left")
    sizes = np.bincount(groups, minlength=cuts.size + 1)
    if np.any(sizes == 0):
        raise ValueError(
            f"Risk group(s) {np.flatnonzero(sizes == 0).tolist()} are empty with cut points {cuts.tolist()} "
            "(many tied scores?); use fewer groups or other thresholds."
        )
    return groups


def default_group_names(n_groups: int) -> List[str]:
    """Display names of integer risk groups 0 .. n_groups - 1 (0 = lowest risk)."""
    if n_groups == 2:
        return ["low risk", "high risk"]
    if n_groups == 3:
        return ["low risk", "intermediate risk", "high risk"]
    return [f"risk group {g + 1} of {n_groups}" for g in range(n_groups)]


def _json_number(value) -> Optional[float]:
    """float for JSON; None for an undefined value (a median never reached is inf in lifelines, a band NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _group_summary(fitter, times_at_risk: np.ndarray) -> Dict:
    """n, events, median survival (with CI) and the curve sampled at ``times_at_risk`` for one fitted group."""
    from lifelines.utils import median_survival_times

    events = fitter.event_table
    median_ci = median_survival_times(fitter.confidence_interval_).to_numpy()[0]
    survival = fitter.survival_function_at_times(times_at_risk).to_numpy()
    band = fitter.confidence_interval_survival_function_
    # Band value at t = last step at or before t (the band is a step function like the curve).
    band_rows = np.searchsorted(band.index.to_numpy(), times_at_risk, side="right") - 1
    band_values = band.to_numpy()[np.clip(band_rows, 0, None)]
    band_values[band_rows < 0] = 1.0
    # Subjects still at risk at t: durations >= t (lifelines' "At risk" row counts the same way).
    durations = fitter.durations
    return {
        "n": int(events["at_risk"].iloc[0]),
        "n_events": int(events["observed"].sum()),
        "median_survival": _json_number(fitter.median_survival_time_),
        "median_survival_ci": [_json_number(v) for v in median_ci],
        "end_time": float(durations.max()),
        "end_survival": float(fitter.survival_function_.iloc[-1, 0]),
        "end_survival_ci": [_json_number(v) for v in band.iloc[-1].to_numpy()],
        "times": times_at_risk.tolist(),
        "n_at_risk": [int((durations >= t).sum()) for t in times_at_risk],
        "survival": [_json_number(v) for v in survival],
        "survival_ci_low": [_json_number(v) for v in band_values[:, 0]],
        "survival_ci_high": [_json_number(v) for v in band_values[:, 1]],
    }


def kaplan_meier_analysis(
    time,
    event,
    groups,
    out_dir: Union[str, Path],
    group_names: Optional[Sequence[str]] = None,
    times_at_risk: Optional[Sequence[float]] = None,
    ci: float = 0.95,
    filename: str = "kaplan_meier",
    title: Optional[str] = None,
    time_unit: str = "years",
) -> Dict:
    """Kaplan-Meier curves per group with confidence bands, a log-rank test, saved as PNG and JSON.

    Two groups use lifelines' ``logrank_test``; more groups the multivariate log-rank test (one chi-square test
    of "all groups share one survival function", k - 1 degrees of freedom). Bands are lifelines' exponential
    Greenwood intervals at level ``ci``.

    Args:
        time: (N,) follow-up time (> = 0) until event or censoring.
        event: (N,) 1 = event observed (e.g. death), 0 = censored.
        groups: (N,) group of each subject: ints from :func:`risk_groups` (0 = lowest risk) or strings.
        out_dir: folder for ``<filename>.png`` and ``<filename>.json`` (created if missing).
        group_names: display names in sorted order of the distinct ``groups``; default: the strings themselves,
            or "low risk" / "high risk" (and :func:`default_group_names`) for integer groups.
        times_at_risk: times at which the JSON reports n at risk and survival; default 6 points from 0 to the
            last follow-up.
        ci: band level. filename, title, time_unit: output name, plot title, x-axis unit.

    Returns:
        The JSON content: {"groups": {name: {n, n_events, median_survival, median_survival_ci, end_time,
        end_survival, end_survival_ci, times, n_at_risk, survival, survival_ci_low, survival_ci_high}},
        "logrank": {"test", "statistic", "p_value", "degrees_of_freedom"}, "ci", "png", "json"}.
        A median that is never reached is ``null``.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test, multivariate_logrank_test
    from lifelines.plotting import add_at_risk_counts
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event)
    groups = np.asarray(groups)
    if not (time.ndim == 1 and time.shape == event.shape == groups.shape):
        raise ValueError(
            f"time, event and groups must be 1-D of one length; got {time.shape}, {event.shape}, {groups.shape}."
        )
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise ValueError("time must be finite and >= 0 for every subject.")
    if not np.all(np.isin(event, (0, 1))):
        raise ValueError(f"event must be 0 (censored) or 1 (event); got values {np.unique(event).tolist()}.")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1); got {ci}.")
    levels = np.unique(groups)
    if levels.size < 2:
        raise ValueError(f"Need at least 2 groups for a log-rank test; got {levels.tolist()}.")
    if group_names is None:
        if np.issubdtype(levels.dtype, np.integer) and np.array_equal(levels, np.arange(levels.size)):
            group_names = default_group_names(levels.size)
        else:
            group_names = [str(level) for level in levels]
    if len(group_names) != levels.size:
        raise ValueError(f"group_names has {len(group_names)} names for {levels.size} groups {levels.tolist()}.")
    if times_at_risk is None:
        times_at_risk = np.linspace(0.0, time.max(), 6)
    times_at_risk = np.asarray(times_at_risk, dtype=np.float64)

    figure = Figure(figsize=(7, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    fitters, summaries = [], {}
    for level, name in zip(levels, group_names):
        member = groups == level
        fitter = KaplanMeierFitter(alpha=1.0 - ci).fit(time[member], event[member], label=name)
        fitter.plot_survival_function(ax=axes, ci_show=True)
        fitters.append(fitter)
        summaries[name] = _group_summary(fitter, times_at_risk)

    if levels.size == 2:
        first, second = groups == levels[0], groups == levels[1]
        test = logrank_test(time[first], time[second], event[first], event[second])
        test_name = "logrank"
    else:
        test = multivariate_logrank_test(time, groups, event)
        test_name = "multivariate_logrank"
    logrank = {
        "test": test_name,
        "statistic": float(test.test_statistic),
        "p_value": float(test.p_value),
        "degrees_of_freedom": int(test.degrees_of_freedom),
    }

    axes.set_xlabel(f"Time ({time_unit})")
    axes.set_ylabel("Survival probability")
    axes.set_ylim(0.0, 1.02)
    axes.set_title(title or f"Kaplan-Meier, {int(round(ci * 100))}% bands; log-rank p = {logrank['p_value']:.2g}")
    axes.set_xticks(times_at_risk)
    # Count at the start of each period (durations >= t), the same number the JSON reports.
    add_at_risk_counts(
        *fitters, ax=axes, fig=figure, rows_to_show=["At risk"], xticks=times_at_risk,
        at_risk_count_from_start_of_period=True,
    )
    figure.tight_layout()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png_path, json_path = out_dir / f"{filename}.png", out_dir / f"{filename}.json"
    figure.savefig(png_path, dpi=120)
    result = {"groups": summaries, "logrank": logrank, "ci": ci, "png": str(png_path), "json": str(json_path)}
    json_path.write_text(json.dumps(result, indent=2))
    logger.info(
        "Kaplan-Meier analysis written to %s and %s (log-rank p = %.3g)", png_path, json_path, logrank["p_value"]
    )
    return result

"""Evaluation: metrics with bootstrap confidence intervals, paired tests, survival analysis.

- :func:`multilabel_metrics` — per-class and macro AUROC / AUPRC with percentile-bootstrap CIs (identical to
  scikit-learn's ``roc_auc_score`` / ``average_precision_score``, vectorised over resamples);
- :func:`stratified_metrics` — the same per prevalence stratum (high / medium / low, CXR-LT style);
- :func:`paired_permutation_test` — two-sided paired permutation test between two models;
- :func:`risk_groups`, :func:`kaplan_meier_analysis` — opportunistic risk (lifelines, ``train`` extra);
- :func:`metric_path` — folder of an ``evaluate`` module shipped with the package, for ``evaluate.load``.
"""

from pathlib import Path

from .metrics import (
    bootstrap_indices,
    bootstrap_replicates,
    format_table,
    multilabel_metrics,
    percentile_interval,
    prevalence_strata,
    stratified_metrics,
)
from .stats import paired_permutation_test, permutation_swaps
from .survival import default_group_names, kaplan_meier_analysis, risk_groups

EVALUATE_MODULES = ("multilabel_auroc",)


def metric_path(name: str) -> str:
    """Path of the packaged ``evaluate`` module ``name``: ``evaluate.load(metric_path("multilabel_auroc"))``.

    Loading a local folder works offline (no Hub lookup).
    """
    if name not in EVALUATE_MODULES:
        raise ValueError(f"Unknown evaluate module {name!r}; available: {EVALUATE_MODULES}.")
    folder = Path(__file__).resolve().parent / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(f"{folder / (name + '.py')} is missing from the installed cxrfm package.")
    return str(folder)


__all__ = [
    "EVALUATE_MODULES",
    "bootstrap_indices",
    "bootstrap_replicates",
    "default_group_names",
    "format_table",
    "kaplan_meier_analysis",
    "metric_path",
    "multilabel_metrics",
    "paired_permutation_test",
    "percentile_interval",
    "permutation_swaps",
    "prevalence_strata",
    "risk_groups",
    "stratified_metrics",
]

"""Multi-label AUROC / AUPRC with percentile-bootstrap confidence intervals (CheXFound evaluation protocol).

CheXFound (paper 001, Sec. IV-B "Experimental Design") reports, per finding and averaged over findings (macro),
the area under the ROC curve (AUROC) and the area under the precision-recall curve (AUPRC), with 95% confidence
intervals "over 1,000 bootstrapped samples". The official repository (RPIDIAL/CheXFound) has no statistics
code, so the protocol is implemented here from the paper:

- resampling unit = image: one resample draws N images with replacement and every class sees the same draw
  (paired across classes), so the macro interval reflects the correlation between findings;
- interval = percentile bootstrap, ``numpy.quantile`` with linear interpolation at ``(1 - ci) / 2`` and
  ``(1 + ci) / 2`` (CheXzero instead takes sorted index ``int(q * B) - 1``; the two agree to O(1/B));
- labels ``NaN`` or ``-1`` (CheXpert "uncertain") are ignored for that class only;
- a class without positives or without negatives is undefined: in the data it is left out of the macro and
  listed in ``skipped_classes``; in a resample it is left out of that resample's macro and counted in
  ``n_skipped_resamples``. Nothing undefined is ever averaged in as NaN.

Speed: every resample reuses one sort per class. For class ``c`` the labelled images are sorted by score
(descending, positives first inside a tie) and cut into segments: for each tie group holding a positive, the
negative-only run above it, its positives and its negatives. A resample is a vector of per-image counts ``w``, and
the segment sums of ``w`` for a block of resamples are one sparse-dense product ``S_c @ W``. AUROC (tie-corrected
Mann-Whitney statistic) and AUPRC (scikit-learn's step-wise average precision) then need only cumulative sums over
those segments, which equal scikit-learn's ``roc_auc_score`` / ``average_precision_score`` on the resampled data.
"""

import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)

METRIC_NAMES = ("auroc", "auprc")
# Counts are integers: float32 sums of counts stay exact below 2**24 draws per segment.
_EXACT_FLOAT32_LIMIT = 2**24
# Target size (elements) of one block of the weight matrix (images x resamples) held in memory at once.
_BLOCK_ELEMENTS = 4_000_000


def _as_2d(array, name: str) -> np.ndarray:
    """Return ``array`` (numpy, list or torch tensor) as a float64 (N, C) matrix; a 1-D input is one class."""
    if hasattr(array, "detach"):  # torch.Tensor, possibly on GPU or requiring grad
        array = array.detach().cpu().numpy()
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, C); got shape {matrix.shape}.")
    return matrix


def validate_inputs(y_true, y_score, label_names: Optional[Sequence[str]] = None):
    """Check and normalise multi-label inputs.

    Args:
        y_true: (N, C) or (N,) labels in {0, 1}; ``NaN`` or ``-1`` mean "not labelled" for that class.
        y_score: (N, C) or (N,) finite scores (probabilities or logits), same shape as ``y_true``.
        label_names: C class names; default ``class_0 ... class_{C-1}``.

    Returns:
        labels (N, C) float64 with 1.0 / 0.0 / NaN, scores (N, C) float64, names (list of C str).
    """
    labels = _as_2d(y_true, "y_true")
    scores = _as_2d(y_score, "y_score")
    if labels.shape != scores.shape:
        raise ValueError(f"y_true and y_score must have the same shape; got {labels.shape} and {scores.shape}.")
    if labels.shape[0] == 0:
        raise ValueError("y_true is empty: need at least one image.")
    if not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"y_score must be finite; found {scores[tuple(bad)]} at (image, class) = {tuple(bad)}.")
    labels = np.where(labels == -1, np.nan, labels)
    known = labels[~np.isnan(labels)]
    if not np.all((known == 0) | (known == 1)):
        raise ValueError(f"y_true must hold 0, 1, -1 or NaN; found {np.unique(known[(known != 0) & (known != 1)])}.")
    n_classes = labels.shape[1]
    if label_names is None:
        names = [f"class_{c}" for c in range(n_classes)]
    else:
        names = [str(name) for name in label_names]
        if len(names) != n_classes:
            raise ValueError(f"label_names has {len(names)} names but y_true has {n_classes} classes.")
        if len(set(names)) != len(names):
            raise ValueError(f"label_names must be unique; got {names}.")
    return labels, scores, names


class ClassSegments(NamedTuple):
    """One class's sort, reused by every resample (see :func:`class_segments`)."""

    matrix: sparse.csr_array  # (2 G + T + 1, M) 0/1 segment membership of the M pool entries
    n_groups: int  # G: tie groups holding at least one positive
    tied_groups: np.ndarray  # (T,) which of the G groups also hold negatives (score ties across labels)


def class_segments(
    labels: np.ndarray, scores: np.ndarray, pool_index: Optional[np.ndarray] = None
) -> Optional[ClassSegments]:
    """Sparse segment matrix of one class: the sort that every resample of this class reuses.

    The labelled entries are sorted by decreasing score and cut at the G tie groups that hold a positive
    (numbered g = 0 .. G-1 from the highest score). Rows of the matrix, each a 0/1 indicator over pool entries:
    row g (g < G) = negatives scored strictly between group g - 1 and group g; row G = negatives below the last
    group; row G + 1 + g = positives of group g; row 2 G + 1 + t = negatives tied with the positives of group
    ``tied_groups[t]``. Multiplying by a weight matrix gives every segment's total weight for every weighting.

    Args:
        labels: (M,) 1.0 / 0.0 / NaN for the M pool entries (NaN entries are left out).
        scores: (M,) finite scores.
        pool_index: (M,) column of each entry in the weight matrix; default ``arange(M)``.

    Returns:
        ``None`` if the labelled entries have no positive or no negative, else :class:`ClassSegments`.
    """
    if pool_index is None:
        pool_index = np.arange(labels.shape[0])
    labelled = ~np.isnan(labels)
    is_positive = labels[labelled] == 1
    if is_positive.all() or not is_positive.any():
        return None
    entry = pool_index[labelled]
    score = scores[labelled]
    order = np.lexsort((~is_positive, -score))  # score descending, positives first inside a tie
    score, is_positive, entry = score[order], is_positive[order], entry[order]
    group_id = np.cumsum(np.r_[True, score[1:] != score[:-1]]) - 1
    n_all_groups = group_id[-1] + 1
    group_has_positive = np.bincount(group_id[is_positive], minlength=n_all_groups) > 0
    group_has_negative = np.bincount(group_id[~is_positive], minlength=n_all_groups) > 0
    positive_rank = np.cumsum(group_has_positive) - 1  # index g of each positive group
    n_groups = int(group_has_positive.sum())
    tied = group_has_positive & group_has_negative
    tied_rank = np.cumsum(tied) - 1
    in_positive_group = group_has_positive[group_id]
    segment = np.where(
        is_positive,
        n_groups + 1 + positive_rank[group_id],
        np.where(in_positive_group, 2 * n_groups + 1 + tied_rank[group_id], positive_rank[group_id] + 1),
    )
    n_rows = 2 * n_groups + int(tied.sum()) + 1
    by_row = np.argsort(segment, kind="stable")
    indptr = np.searchsorted(segment[by_row], np.arange(n_rows + 1))
    dtype = np.float32 if labels.shape[0] < _EXACT_FLOAT32_LIMIT else np.float64
    data = np.ones(entry.shape[0], dtype=dtype)
    matrix = sparse.csr_array((data, entry[by_row], indptr), shape=(n_rows, int(pool_index.max()) + 1))
    return ClassSegments(matrix, n_groups, positive_rank[np.flatnonzero(tied)])


def auroc_auprc_from_segments(
    segments: ClassSegments, weights: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC and AUPRC of one class under each column of ``weights`` (counts of each pool entry).

    With per-group positive weight p_g, tied negative weight n_g, cumulative positive TP_g and negative FP_g
    weight at scores >= s_g, P = sum p and Nn = total negative weight:

    - AUROC = [P Nn - sum_g p_g FP_g + sum_g p_g n_g / 2] / (P Nn), the Mann-Whitney U with ties counted 1/2,
      equal to the trapezoidal area under the ROC curve (scikit-learn ``roc_auc_score``);
    - AUPRC = sum_g p_g TP_g / (TP_g + FP_g) / P, i.e. sum_k (R_k - R_{k-1}) P_k over the distinct thresholds,
      scikit-learn's step-wise ``average_precision_score`` (no interpolation).

    Args:
        segments: from :func:`class_segments`.
        weights: (M, B) non-negative integer weights (bootstrap counts or 0/1 selections), one column per weighting.

    Returns:
        auroc (B,), auprc (B,) float64 (NaN where undefined) and defined (B,) bool: the weighting kept at least
        one positive and one negative.
    """
    sums = (segments.matrix @ weights).astype(np.float64, copy=False)
    n_groups = segments.n_groups
    negative_runs, positive = sums[: n_groups + 1], sums[n_groups + 1 : 2 * n_groups + 1]
    tied_negative = sums[2 * n_groups + 1 :]
    negative_through = negative_runs[:n_groups].copy()
    negative_through[segments.tied_groups] += tied_negative
    false_positives = np.cumsum(negative_through, axis=0)
    true_positives = np.cumsum(positive, axis=0)
    total_positive = true_positives[-1]
    total_negative = false_positives[-1] + negative_runs[-1]
    defined = (total_positive > 0) & (total_negative > 0)
    ties = np.einsum("gb,gb->b", positive[segments.tied_groups], tied_negative)
    with np.errstate(invalid="ignore", divide="ignore"):
        mann_whitney_u = total_positive * total_negative - np.einsum("gb,gb->b", positive, false_positives) + 0.5 * ties
        auroc = mann_whitney_u / (total_positive * total_negative)
        # TP + FP is an integer weight; where it is 0 the group's positive weight is 0 too, so clamp to 1.
        precision = true_positives / np.maximum(true_positives + false_positives, 1.0)
        auprc = np.einsum("gb,gb->b", positive, precision) / total_positive
    auroc[~defined] = np.nan
    auprc[~defined] = np.nan
    return auroc, auprc, defined


def bootstrap_indices(n_samples: int, seed: int, resample: int) -> np.ndarray:
    """Image indices of bootstrap resample number ``resample``: ``n_samples`` draws with replacement.

    Each resample has its own generator seeded by ``(seed, resample)``, so resample b is the same whatever the
    block size or ``n_bootstrap`` (the first 100 of 1,000 resamples are the 100 of ``n_bootstrap=100``).
    """
    return np.random.default_rng((seed, resample)).integers(0, n_samples, size=n_samples)


def _resample_counts(n_samples: int, seed: int, resamples: Sequence[int], dtype) -> np.ndarray:
    """(N, B) count matrix: entry (i, b) = how often image i is drawn in resample ``resamples[b]``."""
    counts = np.empty((n_samples, len(resamples)), dtype=dtype)
    for column, resample in enumerate(resamples):
        counts[:, column] = np.bincount(bootstrap_indices(n_samples, seed, resample), minlength=n_samples)
    return counts


def _block_size(n_entries: int) -> int:
    return int(np.clip(_BLOCK_ELEMENTS // max(n_entries, 1), 1, 512))


def bootstrap_replicates(y_true, y_score, n_bootstrap: int = 1000, seed: int = 0) -> Dict[str, np.ndarray]:
    """Per-class AUROC / AUPRC on the full data and on every bootstrap resample (vectorised).

    Args:
        y_true: (N, C) labels (0/1, NaN or -1 = ignored); y_score: (N, C) scores.
        n_bootstrap: number B of resamples of the N images (paired across classes).
        seed: resample b uses :func:`bootstrap_indices` ``(N, seed, b)``.

    Returns:
        dict with ``"auroc"``, ``"auprc"`` of shape (C,) (full data) and ``"auroc_replicates"``,
        ``"auprc_replicates"`` of shape (B, C). Undefined values (a class without positives or negatives, in the
        data or in that resample) are NaN here; :func:`multilabel_metrics` turns them into explicit counts.
    """
    labels, scores, _ = validate_inputs(y_true, y_score)
    n_samples, n_classes = labels.shape
    segments = [class_segments(labels[:, c], scores[:, c]) for c in range(n_classes)]
    out = {name: np.full(n_classes, np.nan) for name in METRIC_NAMES}
    for name in METRIC_NAMES:
        out[f"{name}_replicates"] = np.full((n_bootstrap, n_classes), np.nan)
    dtype = np.float32 if n_samples < _EXACT_FLOAT32_LIMIT else np.float64
    ones = np.ones((n_samples, 1), dtype=dtype)
    for c, seg in enumerate(segments):
        if seg is not None:
            auroc, auprc, _ = auroc_auprc_from_segments(seg, ones)
            out["auroc"][c], out["auprc"][c] = auroc[0], auprc[0]
    block = _block_size(n_samples)
    for start in range(0, n_bootstrap, block):
        stop = min(start + block, n_bootstrap)
        counts = _resample_counts(n_samples, seed, range(start, stop), dtype)
        for c, seg in enumerate(segments):
            if seg is not None:
                auroc, auprc, _ = auroc_auprc_from_segments(seg, counts)
                out["auroc_replicates"][start:stop, c] = auroc
                out["auprc_replicates"][start:stop, c] = auprc
    return out


def percentile_interval(replicates: np.ndarray, ci: float) -> Optional[Tuple[float, float]]:
    """Percentile bootstrap interval (low, high) at level ``ci`` of the finite replicates; None if there are none."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return None
    low, high = np.quantile(finite, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(low), float(high)


def _macro_summary(values: np.ndarray, replicates: np.ndarray, classes: np.ndarray, ci: float) -> Dict:
    """Macro average over ``classes`` (indices of classes defined in the data) with its interval.

    A resample in which some of these classes are undefined averages over the rest and is counted in
    ``n_skipped_resamples``; a resample with none left is dropped from the interval.
    """
    summary = {}
    for name in METRIC_NAMES:
        summary[name] = float(values[name][classes].mean()) if classes.size else None
        reps = replicates[name][:, classes]
        defined = np.isfinite(reps)
        n_defined = defined.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            macro = np.where(defined, reps, 0.0).sum(axis=1) / n_defined
        summary[f"{name}_ci"] = percentile_interval(macro[n_defined > 0], ci) if classes.size else None
    summary["n_classes"] = int(classes.size)
    summary["n_skipped_resamples"] = int((~np.isfinite(replicates["auroc"][:, classes])).any(axis=1).sum())
    return summary


def _check_ci(ci: float, n_bootstrap: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci}.")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0; got {n_bootstrap}.")


def _skip_reason(n_positive: int, n_negative: int) -> Optional[str]:
    if n_positive == 0 and n_negative == 0:
        return "no labelled images"
    if n_positive == 0:
        return "no positive labels"
    if n_negative == 0:
        return "no negative labels"
    return None


def multilabel_metrics(
    y_true,
    y_score,
    label_names: Optional[Sequence[str]] = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> Dict:
    """Per-class and macro AUROC / AUPRC with percentile-bootstrap confidence intervals.

    Args:
        y_true: (N, C) or (N,) labels 0/1; ``NaN`` or ``-1`` = not labelled (ignored for that class).
        y_score: (N, C) or (N,) finite scores; only their order matters.
        label_names: C class names (keys of ``per_class``); default ``class_0 ...``.
        n_bootstrap: number of resamples of the images (paired across classes); 0 gives no intervals.
        seed: resampling seed (see :func:`bootstrap_indices`).
        ci: interval level (0.95 = 2.5th and 97.5th percentiles).

    Returns:
        ``{"macro": {"auroc", "auroc_ci", "auprc", "auprc_ci", "n_classes", "n_skipped_resamples"},
        "per_class": {name: {"auroc", "auroc_ci", "auprc", "auprc_ci", "n_positive", "n_negative",
        "n_skipped_resamples"}}, "skipped_classes": {name: reason}, "n_bootstrap", "ci", "seed"}``.
        Point values are on the full data; intervals are (low, high) tuples. A class undefined in the data has
        None values and appears in ``skipped_classes``; ``n_skipped_resamples`` counts the resamples in which the
        class (per class) or at least one class (macro) had no positive or no negative and was left out.
    """
    _check_ci(ci, n_bootstrap)
    labels, scores, names = validate_inputs(y_true, y_score, label_names)
    reps = bootstrap_replicates(labels, scores, n_bootstrap=n_bootstrap, seed=seed)
    values = {name: reps[name] for name in METRIC_NAMES}
    replicates = {name: reps[f"{name}_replicates"] for name in METRIC_NAMES}

    per_class, skipped = {}, {}
    for c, label_name in enumerate(names):
        n_positive = int((labels[:, c] == 1).sum())
        n_negative = int((labels[:, c] == 0).sum())
        reason = _skip_reason(n_positive, n_negative)
        entry = {}
        for name in METRIC_NAMES:
            entry[name] = None if reason else float(values[name][c])
            entry[f"{name}_ci"] = None if reason else percentile_interval(replicates[name][:, c], ci)
        entry["n_positive"], entry["n_negative"] = n_positive, n_negative
        entry["n_skipped_resamples"] = int(np.isnan(replicates["auroc"][:, c]).sum()) if not reason else n_bootstrap
        per_class[label_name] = entry
        if reason:
            skipped[label_name] = reason
    if skipped:
        logger.warning("Left out of the macro average (undefined AUROC/AUPRC): %s", skipped)
    defined_classes = np.array([c for c, name in enumerate(names) if name not in skipped], dtype=int)
    return {
        "macro": _macro_summary(values, replicates, defined_classes, ci),
        "per_class": per_class,
        "skipped_classes": skipped,
        "n_bootstrap": n_bootstrap,
        "ci": ci,
        "seed": seed,
    }


def prevalence_strata(prevalence: np.ndarray, high: float = 0.1, low: float = 0.01) -> Dict[str, np.ndarray]:
    """Split classes by prevalence: ``high`` if prevalence >= ``high``, ``low`` if < ``low``, else ``medium``.

    The defaults follow CheXFound's reading of CXR-LT 24 (Fig. 4): "low prevalence" = occurrence below 1%
    (paper 001, Discussion); the 10% head/medium cut is this package's default, so pass your own thresholds.

    Args:
        prevalence: (C,) fraction of positive labels per class.

    Returns:
        {"high", "medium", "low"} -> indices of the classes in that stratum.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"Need 0 <= low <= high <= 1 for the prevalence thresholds; got low={low}, high={high}.")
    prevalence = np.asarray(prevalence, dtype=np.float64)
    return {
        "high": np.flatnonzero(prevalence >= high),
        "medium": np.flatnonzero((prevalence >= low) & (prevalence < high)),
        "low": np.flatnonzero(prevalence < low),
    }


def stratified_metrics(
    y_true,
    y_score,
    label_names: Optional[Sequence[str]] = None,
    high: float = 0.1,
    low: float = 0.01,
    prevalence: Optional[Sequence[float]] = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> Dict[str, Dict]:
    """Macro AUROC / AUPRC with intervals per prevalence stratum (CXR-LT style, CheXFound Fig. 4b).

    Args:
        y_true, y_score, label_names, n_bootstrap, seed, ci: as in :func:`multilabel_metrics`; the strata share
            the same resamples.
        high, low: prevalence thresholds (see :func:`prevalence_strata`).
        prevalence: (C,) prevalence used to stratify, e.g. from the training set as in CXR-LT; default = the
            fraction of positives among the labelled images of ``y_true``.

    Returns:
        {"high" | "medium" | "low": {"classes": [names], "auroc", "auroc_ci", "auprc", "auprc_ci", "n_classes",
        "n_skipped_resamples", "thresholds"}}; classes undefined in the data are left out of every stratum.
    """
    _check_ci(ci, n_bootstrap)
    labels, scores, names = validate_inputs(y_true, y_score, label_names)
    if prevalence is None:
        n_labelled = (~np.isnan(labels)).sum(axis=0)
        prevalence = np.divide((labels == 1).sum(axis=0), n_labelled, out=np.zeros(len(names)), where=n_labelled > 0)
    prevalence = np.asarray(prevalence, dtype=np.float64)
    if prevalence.shape != (len(names),):
        raise ValueError(f"prevalence must have shape ({len(names)},); got {prevalence.shape}.")
    reps = bootstrap_replicates(labels, scores, n_bootstrap=n_bootstrap, seed=seed)
    values = {name: reps[name] for name in METRIC_NAMES}
    replicates = {name: reps[f"{name}_replicates"] for name in METRIC_NAMES}
    defined = np.isfinite(values["auroc"])
    result = {}
    for stratum, classes in prevalence_strata(prevalence, high=high, low=low).items():
        classes = classes[defined[classes]]
        summary = _macro_summary(values, replicates, classes, ci)
        summary["classes"] = [names[c] for c in classes]
        summary["thresholds"] = {"high": high, "low": low}
        result[stratum] = summary
    return result


def format_table(results: Dict, digits: int = 3) -> List[str]:
    """Lines of a plain-text table of :func:`multilabel_metrics` output: name, AUROC (CI), AUPRC (CI)."""

    def cell(value, interval):
        if value is None:
            return "undefined"
        text = f"{value:.{digits}f}"
        if interval is not None:
            text += f" ({interval[0]:.{digits}f}-{interval[1]:.{digits}f})"
        return text

    rows = [("macro", results["macro"])] + list(results["per_class"].items())
    width = max(len(name) for name, _ in rows)
    level = f"{results['ci'] * 100:g}% CI"
    lines = [f"{'class':<{width}}  {'AUROC (' + level + ')':<24}  AUPRC ({level})"]
    for name, entry in rows:
        auroc, auprc = cell(entry["auroc"], entry["auroc_ci"]), cell(entry["auprc"], entry["auprc_ci"])
        lines.append(f"{name:<{width}}  {auroc:<24}  {auprc}")
    return lines

"""Two-sided paired permutation test between two models' macro AUROC / AUPRC (CheXFound evaluation protocol).

Paper 001 (Sec. IV-B): "a two-sided paired permutation test with 1,000 permutations to assess the observed
performance differences of the two models". Under the null hypothesis the two models are exchangeable on every
image, so a permutation swaps model A's and model B's scores of each image (all classes of that image together)
with probability 1/2 and recomputes the macro difference.

Vectorised like the bootstrap: the 2N scores of both models form one pool per class, sorted once; a permuted
model A' is a 0/1 weighting of that pool (image i contributes either its A entry or its B entry) and B' is the
complementary weighting, so every permutation reuses :func:`cxrfm.evaluation.metrics.class_segments`.
"""

import logging
from typing import Dict, Sequence

import numpy as np

from .metrics import (
    _EXACT_FLOAT32_LIMIT,
    METRIC_NAMES,
    _block_size,
    auroc_auprc_from_segments,
    class_segments,
    validate_inputs,
)

logger = logging.getLogger(__name__)

# Permuted differences within this distance of the observed one count as "at least as extreme", so that
# floating-point noise never turns an exact tie (e.g. two identical models) into a spurious small p-value.
_TIE_TOLERANCE = 1e-12


def permutation_swaps(n_samples: int, seed: int, permutation: int) -> np.ndarray:
    """(N,) bool: which images swap the two models' scores in permutation number ``permutation``.

    Seeded by ``(seed, permutation)``, so a permutation does not depend on how many are run or on block size.
    """
    return np.random.default_rng((seed, permutation)).random(n_samples) < 0.5


def _macro_of_weightings(segments, weights: np.ndarray) -> Dict[str, np.ndarray]:
    """Macro AUROC / AUPRC (over the defined classes) of each column of ``weights`` (2N, B)."""
    totals = {name: np.zeros(weights.shape[1]) for name in METRIC_NAMES}
    for seg in segments:
        auroc, auprc, _ = auroc_auprc_from_segments(seg, weights)
        totals["auroc"] += auroc
        totals["auprc"] += auprc
    return {name: total / len(segments) for name, total in totals.items()}


def paired_permutation_test(
    y_true,
    score_a,
    score_b,
    n_permutations: int = 1000,
    seed: int = 0,
    metrics: Sequence[str] = ("auroc", "auprc"),
) -> Dict[str, Dict[str, float]]:
    """Two-sided paired permutation test of macro(metric of A) - macro(metric of B).

    p-value with the +1 correction (the observed labelling counts as one of the permutations, so p is never 0):
    ``p = (1 + #{k : |delta_k| >= |delta_obs|}) / (1 + n_permutations)``; the smallest reachable p is
    1 / (n_permutations + 1), e.g. 0.000999 for 1,000 permutations (the paper's "p < 0.001").

    Args:
        y_true: (N, C) or (N,) labels 0/1; ``NaN`` or ``-1`` = not labelled (ignored for that class).
        score_a, score_b: (N, C) or (N,) finite scores of models A and B on the same images.
        n_permutations: number of random swaps of the two models' scores per image.
        seed: permutation k swaps the images :func:`permutation_swaps` ``(N, seed, k)``.
        metrics: subset of ("auroc", "auprc").

    Returns:
        {metric: {"delta": macro_A - macro_B on the data, "p_value": two-sided permutation p-value}}. Macros are
        over the classes with at least one positive and one negative label (those are unchanged by a swap).
    """
    unknown = [name for name in metrics if name not in METRIC_NAMES]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRIC_NAMES}; got {tuple(metrics)}.")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1; got {n_permutations}.")
    labels, scores_a, _ = validate_inputs(y_true, score_a)
    _, scores_b, _ = validate_inputs(labels, score_b)
    n_samples, n_classes = labels.shape
    pooled_labels = np.concatenate([labels, labels])  # rows 0..N-1 = model A's entries, N..2N-1 = model B's
    pooled_scores = np.concatenate([scores_a, scores_b])
    segments = [class_segments(pooled_labels[:, c], pooled_scores[:, c]) for c in range(n_classes)]
    segments = [seg for seg in segments if seg is not None]
    if not segments:
        raise ValueError("No class has both a positive and a negative label: the permutation test is undefined.")
    if len(segments) < n_classes:
        n_left_out = n_classes - len(segments)
        logger.warning("%d of %d classes lack positives or negatives and are left out.", n_left_out, n_classes)

    dtype = np.float32 if 2 * n_samples < _EXACT_FLOAT32_LIMIT else np.float64
    observed_a = np.concatenate([np.ones(n_samples), np.zeros(n_samples)]).astype(dtype)[:, None]
    observed = _macro_of_weightings(segments, np.concatenate([observed_a, 1 - observed_a], axis=1))
    observed_delta = {name: observed[name][0] - observed[name][1] for name in METRIC_NAMES}

    n_extreme = {name: 0 for name in METRIC_NAMES}
    block = _block_size(2 * n_samples)
    for start in range(0, n_permutations, block):
        permutations = range(start, min(start + block, n_permutations))
        swaps = np.stack([permutation_swaps(n_samples, seed, k) for k in permutations], axis=1)
        weights_a = np.concatenate([~swaps, swaps]).astype(dtype)  # A' keeps A's score unless the image swaps
        macro_a = _macro_of_weightings(segments, weights_a)
        macro_b = _macro_of_weightings(segments, 1 - weights_a)
        for name in METRIC_NAMES:
            delta = macro_a[name] - macro_b[name]
            n_extreme[name] += int((np.abs(delta) >= abs(observed_delta[name]) - _TIE_TOLERANCE).sum())
    return {
        name: {
            "delta": float(observed_delta[name]),
            "p_value": (1 + n_extreme[name]) / (1 + n_permutations),
        }
        for name in metrics
    }

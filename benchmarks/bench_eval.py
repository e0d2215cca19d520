"""Bootstrap AUROC/AUPRC: cxrfm's vectorised resampling vs the scikit-learn loop, side by side.

Workload (the issue's target): 1,000 bootstrap resamples x 40 classes x 50,000 images, long-tailed prevalence
(30% down to 0.1%, like CXR-LT 24), 5% of labels missing (NaN). The scikit-learn loop (``roc_auc_score`` +
``average_precision_score`` per class per resample) takes about half an hour here, so it runs on the first
``--sklearn-resamples`` resamples only and its time is extrapolated linearly to all resamples; both sides use
the same resamples and the script checks that their numbers agree.

    python benchmarks/bench_eval.py [--n-images 50000 --n-classes 40 --n-bootstrap 1000 --sklearn-resamples 5]
"""

import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrfm.evaluation import bootstrap_indices, bootstrap_replicates, paired_permutation_test


def synthetic_cxr_lt(n_images: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prevalence = np.geomspace(0.3, 0.001, n_classes)
    labels = (rng.random((n_images, n_classes)) < prevalence).astype(np.float64)
    scores = rng.normal(size=labels.shape) + 1.5 * labels
    labels[rng.random(labels.shape) < 0.05] = np.nan
    return labels, scores


def sklearn_loop(labels, scores, resamples, seed):
    """(R, C) AUROC and AUPRC per resample and class, one scikit-learn call per class per resample."""
    n_images, n_classes = labels.shape
    auroc = np.full((len(resamples), n_classes), np.nan)
    auprc = np.full_like(auroc, np.nan)
    for row, b in enumerate(resamples):
        idx = bootstrap_indices(n_images, seed, b)
        for c in range(n_classes):
            y, s = labels[idx, c], scores[idx, c]
            keep = ~np.isnan(y)
            y, s = y[keep], s[keep]
            if 0 < y.sum() < y.size:
                auroc[row, c] = roc_auc_score(y, s)
                auprc[row, c] = average_precision_score(y, s)
    return auroc, auprc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=50_000)
    parser.add_argument("--n-classes", type=int, default=40)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--sklearn-resamples", type=int, default=5, help="resamples timed for the sklearn loop")
    parser.add_argument("--permutations", type=int, default=0, help="also time a paired permutation test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labels, scores = synthetic_cxr_lt(args.n_images, args.n_classes, args.seed)
    print(
        f"workload: {args.n_bootstrap} bootstrap resamples x {args.n_classes} classes x {args.n_images} images "
        f"(prevalence 30% -> 0.1%, 5% NaN labels); metrics: AUROC + AUPRC"
    )

    start = time.perf_counter()
    ours = bootstrap_replicates(labels, scores, n_bootstrap=args.n_bootstrap, seed=args.seed)
    ours_seconds = time.perf_counter() - start

    subset = list(range(min(args.sklearn_resamples, args.n_bootstrap)))
    start = time.perf_counter()
    ref_auroc, ref_auprc = sklearn_loop(labels, scores, subset, args.seed)
    subset_seconds = time.perf_counter() - start
    sklearn_seconds = subset_seconds * args.n_bootstrap / len(subset)

    diff = max(
        np.nanmax(np.abs(ours["auroc_replicates"][subset] - ref_auroc)),
        np.nanmax(np.abs(ours["auprc_replicates"][subset] - ref_auprc)),
    )
    same_undefined = np.array_equal(np.isnan(ours["auroc_replicates"][subset]), np.isnan(ref_auroc))
    print(f"cxrfm (vectorised, all {args.n_bootstrap} resamples, measured):    {ours_seconds:9.2f} s")
    print(
        f"scikit-learn loop ({len(subset)} resamples measured = {subset_seconds:.2f} s, "
        f"extrapolated linearly x{args.n_bootstrap / len(subset):g}): {sklearn_seconds:9.2f} s"
    )
    print(f"speed-up: {sklearn_seconds / ours_seconds:.1f}x")
    print(
        f"agreement on the {len(subset)} shared resamples: max |diff| = {diff:.2e}, "
        f"same undefined (class, resample) cells: {same_undefined}"
    )

    if args.permutations:
        other = scores + np.random.default_rng(args.seed + 1).normal(scale=0.5, size=scores.shape)
        start = time.perf_counter()
        result = paired_permutation_test(labels, scores, other, n_permutations=args.permutations, seed=args.seed)
        print(
            f"paired permutation test, {args.permutations} permutations (cxrfm): "
            f"{time.perf_counter() - start:.2f} s; {result}"
        )


if __name__ == "__main__":
    main()

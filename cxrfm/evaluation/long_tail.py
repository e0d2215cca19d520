"""Long-tailed zero-shot evaluation of CXR-CML (paper 003, Sec. 3 and Table 2): base vs rare classes.

Protocol: classes are split by their number of positive TRAINING images, rare = fewer than ``threshold`` (paper:
1,000 on MIMIC-CXR-JPG, giving 28 base and 12 rare of the 40 CXR-LT classes). The split is always computed from
the training labels handed in, never from a fixed list, so another collection or the phantom set gets its own
split. Macro AUROC (and AUPRC) is reported over all, base and rare classes with percentile-bootstrap CIs
(:func:`cxrfm.evaluation.multilabel_metrics`, the same image resamples for the three groups). Two models on the
same images are compared per group with the paired permutation test (:func:`paired_permutation_test`).
``tsne_plot`` draws the paper's Fig. 2: a 2-D t-SNE (scikit-learn) of image embeddings, coloured by class, with
base and rare classes drawn with different markers.
"""

import logging
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from .metrics import multilabel_metrics
from .stats import paired_permutation_test

logger = logging.getLogger(__name__)

GROUPS = ("all", "base", "rare")


def base_rare_split(train_labels, label_names: Sequence[str], threshold: int = 1000) -> Dict:
    """{"base": [...], "rare": [...], "counts": {name: positives}} from (N, C) training labels (1 = positive,
    0 / NaN / -1 otherwise); rare = fewer than ``threshold`` positives."""
    labels = np.asarray(train_labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(label_names):
        raise ValueError(f"train_labels must be (N, {len(label_names)}) for the given label_names, got {labels.shape}.")
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1 training positives, got {threshold}.")
    counts = {name: int(n) for name, n in zip(label_names, (labels == 1).sum(axis=0))}
    rare = [name for name in label_names if counts[name] < threshold]
    base = [name for name in label_names if counts[name] >= threshold]
    return {"base": base, "rare": rare, "counts": counts, "threshold": threshold}


def _columns(label_names: Sequence[str], split: Dict) -> Dict[str, list[int]]:
    index = {name: i for i, name in enumerate(label_names)}
    unknown = [name for name in split["base"] + split["rare"] if name not in index]
    if unknown:
        raise ValueError(f"split classes {unknown} are not among label_names.")
    return {"all": list(range(len(label_names))), "base": [index[n] for n in split["base"]],
            "rare": [index[n] for n in split["rare"]]}


def long_tail_metrics(y_true, y_score, label_names: Sequence[str], split: Dict, n_bootstrap: int = 1000,
                      seed: int = 0, ci: float = 0.95) -> Dict:
    """{"all" | "base" | "rare": multilabel_metrics of those classes} (a group without classes is None)."""
    y_true, y_score = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    results = {}
    for group, columns in _columns(label_names, split).items():
        if not columns:
            results[group] = None
            continue
        results[group] = multilabel_metrics(y_true[:, columns], y_score[:, columns],
                                            label_names=[label_names[c] for c in columns],
                                            n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    return results


def compare_long_tail(y_true, score_a, score_b, label_names: Sequence[str], split: Dict,
                      n_permutations: int = 1000, seed: int = 0) -> Dict:
    """Paired permutation test of model A vs model B per group: {group: {"auroc": {"delta", "p_value"}, ...}}."""
    y_true = np.asarray(y_true, dtype=np.float64)
    score_a, score_b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    return {group: paired_permutation_test(y_true[:, columns], score_a[:, columns], score_b[:, columns],
                                           n_permutations=n_permutations, seed=seed) if columns else None
            for group, columns in _columns(label_names, split).items()}


def summary_rows(results: Dict, digits: int = 3) -> list[str]:
    """One line per group: macro AUROC [CI] over n classes."""
    rows = []
    for group in GROUPS:
        macro = results.get(group) and results[group]["macro"]
        if not macro or macro["auroc"] is None:
            rows.append(f"{group:<5} -")
            continue
        interval = macro.get("auroc_ci")
        text = f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else ""
        rows.append(f"{group:<5} {macro['auroc']:.{digits}f}{text} ({macro['n_classes']} classes)")
    return rows


def tsne_plot(embeddings, labels, label_names: Sequence[str], split: Dict, path, seed: int = 0,
              perplexity: float = 30.0) -> Path:
    """t-SNE of (N, D) image embeddings saved as a PNG at ``path``. Each image is coloured by its rarest positive
    class (fewest training positives; images without one are grey "none"); rare classes are stars, base classes
    dots. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    embeddings, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) != len(labels) or labels.shape[1] != len(label_names):
        raise ValueError(f"embeddings (N, D) and labels (N, {len(label_names)}) must have the same N; got "
                         f"{embeddings.shape} and {labels.shape}.")
    counts = np.array([split["counts"][name] for name in label_names])
    rare = set(split["rare"])
    positive = labels == 1
    # rarest positive class per image (argmin of the training count over its positives)
    ranked = np.where(positive, counts[None, :], np.iinfo(np.int64).max)
    colour_class = np.where(positive.any(axis=1), ranked.argmin(axis=1), -1)
    perplexity = min(perplexity, (len(embeddings) - 1) / 3)
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(embeddings)
    figure, axis = plt.subplots(figsize=(9, 7))
    palette = plt.get_cmap("tab20", max(len(label_names), 1))
    none = colour_class == -1
    axis.scatter(points[none, 0], points[none, 1], s=8, c="lightgrey", label="none")
    for c in np.unique(colour_class[~none]):
        name = label_names[c]
        chosen = colour_class == c
        axis.scatter(points[chosen, 0], points[chosen, 1], s=60 if name in rare else 12, marker="*" if name in rare else "o",
                     color=palette(c % 20), edgecolors="black" if name in rare else "none", linewidths=0.4,
                     label=f"{name} ({'rare' if name in rare else 'base'})")
    axis.set_title(f"t-SNE of image embeddings: {len(split['base'])} base (dots), {len(split['rare'])} rare (stars)")
    axis.legend(fontsize=6, markerscale=0.8, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 + len(label_names) // 25)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    logger.info("t-SNE plot of %d embeddings written to %s", len(embeddings), path)
    return path


__all__ = ["GROUPS", "base_rare_split", "compare_long_tail", "long_tail_metrics", "summary_rows", "tsne_plot"]

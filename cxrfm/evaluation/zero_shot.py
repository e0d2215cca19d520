"""Zero-shot chest X-ray classification with an image-text dual encoder (relaxed-CLIP paper, Eq. 1; CheXzero
protocol) and image-text alignment (paper Table 4).

Protocol (reference/mgca_chexzero_cml_relaxedclip.md §2): for each finding c a positive prompt "{c}" and a
negative prompt "no {c}"; text embeddings are L2-normalised, averaged over templates and normalised again;
p_c = softmax(s_+, s_-)[0] on the *raw* cosines (temperature 1, no logit_scale), as CheXzero does. CheXzero
feeds "no No Finding" for the "No Finding" class, which inverts it (AUROC 0.07, CheXzero issue #19); here
`fix_negated_labels=True` (default) uses "finding"/"no finding" prompts the right way round for labels that start
with "No ".

Also: prompt-template and checkpoint ensembles (mean of probabilities), F1 / MCC at per-class thresholds chosen on
validation, macro AUROC with bootstrap CIs (`multilabel_metrics`), report- and sentence-level cosine similarity, and
the `cxr-zero-shot-classification` pipeline (it lives in the model folder,
`cxrfm.modeling.relaxed_clip.pipeline_cxr_zero_shot_classification`, so saved folders carry it as remote code).
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, matthews_corrcoef

from ..modeling.relaxed_clip.pipeline_cxr_zero_shot_classification import (
    CHEXZERO_TEMPLATES,
    CXRZeroShotClassificationPipeline,
    pair_softmax_probabilities,
    prompt_pairs,
)
from ..processing.labels import PADCHEST_61, get_label_set
from .metrics import multilabel_metrics

# Label sets of the paper's zero-shot evaluation (Table 7) and of CXR-LT 2024, from the one label registry.
ZERO_SHOT_LABEL_SETS: dict[str, tuple[str, ...]] = {
    name: get_label_set(name)
    for name in ("chexpert-13", "chexpert-5", "openi-13", "padchest-61", "vindr-20", "cxr-lt-40")
}


def _pooled(features) -> torch.Tensor:
    """transformers 5.x `get_*_features` return a ModelOutput whose `pooler_output` is the projected embedding."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (T, D) of a CLIP-like model (`get_text_features`)."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        chunks.append(_pooled(model.get_text_features(**tokens.to(device))))
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) from `pixel_values` (N, C, H, W) (`get_image_features`)."""
    device = next(model.parameters()).device
    chunks = [
        _pooled(model.get_image_features(pixel_values=pixel_values[start : start + batch_size].to(device)))
        for start in range(0, len(pixel_values), batch_size)
    ]
    return F.normalize(torch.cat(chunks), dim=-1)


def prompt_embeddings(
    model,
    tokenizer,
    labels: Sequence[str],
    templates: Sequence[tuple[str, str]] = CHEXZERO_TEMPLATES,
    fix_negated_labels: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative prompt embeddings (C, D) each: per label, the normalised mean over templates of the
    normalised embeddings of its prompts (CheXzero's prompt ensemble)."""
    positives, negatives = [], []
    for label in labels:
        positive, negative = prompt_pairs(label, templates, fix_negated_labels=fix_negated_labels)
        positives += positive
        negatives += negative
    embeds = encode_texts(model, tokenizer, positives + negatives)
    per_label = embeds.reshape(2, len(labels), len(templates), -1).mean(dim=2)
    per_label = F.normalize(per_label, dim=-1)
    return per_label[0], per_label[1]


def zero_shot_probabilities(
    model,
    tokenizer,
    pixel_values: torch.Tensor,
    labels: Sequence[str],
    templates: Sequence[tuple[str, str]] = CHEXZERO_TEMPLATES,
    fix_negated_labels: bool = True,
    batch_size: int = 64,
) -> torch.Tensor:
    """(N, C) zero-shot probabilities of `labels` for images `pixel_values` (N, C, H, W)."""
    positive, negative = prompt_embeddings(model, tokenizer, labels, templates, fix_negated_labels)
    return pair_softmax_probabilities(encode_images(model, pixel_values, batch_size), positive, negative).cpu()


def ensemble_probabilities(probabilities: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Mean of (N, C) probabilities over models (CheXzero's and the paper's checkpoint ensemble)."""
    if not probabilities:
        raise ValueError("ensemble_probabilities needs at least one (N, C) array.")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    return stacked.mean(axis=0)


def zero_shot_report(y_true, probabilities, label_names: Sequence[str], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-class and macro AUROC / AUPRC with bootstrap CIs (`multilabel_metrics`) of zero-shot probabilities."""
    return multilabel_metrics(y_true, probabilities, label_names=label_names, n_bootstrap=n_bootstrap, seed=seed)


def _labelled(y_true: np.ndarray, y_score: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
    truth = y_true[:, column]
    keep = np.isfinite(truth) & (truth >= 0)
    return truth[keep].astype(int), y_score[keep, column]


def select_thresholds(y_true, y_score, metric: str = "f1") -> np.ndarray:
    """Per-class decision thresholds maximising F1 (`metric="f1"`) or MCC (`"mcc"`) on validation data; candidates
    are the observed scores (predict positive when score >= threshold). NaN / -1 labels are ignored.

    Args:
        y_true: (N, C) 0/1 labels; y_score: (N, C) scores.
    Returns:
        (C,) thresholds (NaN for a class without both positives and negatives).
    """
    scorer = {"f1": lambda t, p: f1_score(t, p, zero_division=0), "mcc": matthews_corrcoef}.get(metric)
    if scorer is None:
        raise ValueError(f"select_thresholds: metric must be 'f1' or 'mcc', got {metric!r}.")
    y_true, y_score = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    thresholds = np.full(y_true.shape[1], np.nan)
    for column in range(y_true.shape[1]):
        truth, score = _labelled(y_true, y_score, column)
        if truth.min(initial=1) == truth.max(initial=0):
            continue
        candidates = np.unique(score)
        values = [scorer(truth, (score >= candidate).astype(int)) for candidate in candidates]
        thresholds[column] = candidates[int(np.argmax(values))]
    return thresholds


def f1_mcc_at_thresholds(y_true, y_score, thresholds, label_names: Sequence[str] | None = None) -> dict:
    """F1 and MCC per class at given thresholds (e.g. from `select_thresholds` on validation) and their means
    over the classes with a threshold (the paper's Table 3 "Mean F1" / "Mean MCC")."""
    y_true, y_score = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    names = list(label_names) if label_names is not None else [f"class_{c}" for c in range(y_true.shape[1])]
    per_class = {}
    for column, name in enumerate(names):
        if not np.isfinite(thresholds[column]):
            continue
        truth, score = _labelled(y_true, y_score, column)
        predicted = (score >= thresholds[column]).astype(int)
        per_class[name] = {
            "f1": float(f1_score(truth, predicted, zero_division=0)),
            "mcc": float(matthews_corrcoef(truth, predicted)),
            "threshold": float(thresholds[column]),
        }
    return {
        "per_class": per_class,
        "mean_f1": float(np.mean([v["f1"] for v in per_class.values()])) if per_class else float("nan"),
        "mean_mcc": float(np.mean([v["mcc"] for v in per_class.values()])) if per_class else float("nan"),
    }


def report_level_similarity(image_embeds: torch.Tensor, report_embeds: torch.Tensor) -> float:
    """Table 4 report level: mean over image-report pairs of cos(image_i, report_i). Both (N, D)."""
    return float((F.normalize(image_embeds, dim=-1) * F.normalize(report_embeds, dim=-1)).sum(-1).mean())


def sentence_level_similarity(
    image_embeds: torch.Tensor, sentence_embeds: torch.Tensor, sentence_to_image: torch.Tensor | Sequence[int]
) -> float:
    """Table 4 sentence level: for each image the mean cosine to the sentences of its report, averaged over images.

    Args:
        image_embeds: (N, D); sentence_embeds: (S, D); sentence_to_image: (S,) index of each sentence's image.
    """
    owner = torch.as_tensor(sentence_to_image, dtype=torch.long)
    cosine = (F.normalize(sentence_embeds, dim=-1) * F.normalize(image_embeds, dim=-1)[owner]).sum(-1)
    per_image_sum = torch.zeros(len(image_embeds), dtype=cosine.dtype).index_add_(0, owner, cosine)
    counts = torch.bincount(owner, minlength=len(image_embeds))
    has_sentences = counts > 0
    return float((per_image_sum[has_sentences] / counts[has_sentences]).mean())


__all__ = [
    "CXRZeroShotClassificationPipeline",
    "PADCHEST_61",
    "ZERO_SHOT_LABEL_SETS",
    "encode_images",
    "encode_texts",
    "ensemble_probabilities",
    "f1_mcc_at_thresholds",
    "pair_softmax_probabilities",
    "prompt_embeddings",
    "report_level_similarity",
    "select_thresholds",
    "sentence_level_similarity",
    "zero_shot_probabilities",
    "zero_shot_report",
]

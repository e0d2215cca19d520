"""Model cards rendered from a saved model's config and its evaluation results.

``render_model_card`` turns the dict that ``cxrfm.evaluation.multilabel_metrics`` returns into a
``huggingface_hub.ModelCard``: a ``model-index`` with the macro figures (so the Hub shows them) and
a Markdown table with per-class figures and their bootstrap confidence intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).with_name("cxrfm_model_card.md")

# What each family is and which paper it implements; rendered into the card's header.
FAMILIES = {
    "chexfound": {
        "summary": "CheXFound: a DINOv2-style ViT pretrained self-supervised on chest X-rays.",
        "paper": "Chest X-ray Foundation Model with Global and Local Representations Integration "
        "(arXiv:2502.05142)",
        "pipeline_tag": "image-feature-extraction",
    },
    "glori": {
        "summary": "GLoRI: a cross-attention multi-label head on frozen CheXFound features.",
        "paper": "Chest X-ray Foundation Model with Global and Local Representations Integration "
        "(arXiv:2502.05142)",
        "pipeline_tag": "image-classification",
    },
    "relaxed_clip": {
        "summary": "An image-text encoder fine-tuned on report sentences with a relaxed positive-pair "
        "similarity, for zero-shot pathology classification.",
        "paper": "Significantly Improving Zero-Shot X-ray Pathology Classification via Fine-tuning "
        "Pre-trained Image-Text Encoders (arXiv:2212.07050)",
        "pipeline_tag": "zero-shot-image-classification",
    },
    "mgca": {
        "summary": "MGCA: instance-, token- and prototype-level image-report alignment.",
        "paper": "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual "
        "Representation Learning (NeurIPS 2022)",
        "pipeline_tag": "image-feature-extraction",
    },
}


def _format_ci(value: float, ci: tuple[float, float] | None) -> str:
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def metrics_table(results: Mapping[str, Any]) -> str:
    """Markdown table of macro and per-class AUROC/AUPRC with 95% CIs.

    ``results`` has the layout of ``multilabel_metrics``: ``{"macro": {...}, "per_class": {name: {...}}}``.
    """
    rows = ["| finding | AUROC (95% CI) | AUPRC (95% CI) |", "|---|---|---|"]
    named = [("**macro**", results["macro"])] + list(results.get("per_class", {}).items())
    for name, m in named:
        rows.append(f"| {name} | {_format_ci(m['auroc'], m.get('auroc_ci'))} | "
                    f"{_format_ci(m['auprc'], m.get('auprc_ci'))} |")
    return "\n".join(rows)


def render_model_card(
    *,
    model_id: str,
    family: str,
    architecture: str,
    evaluations: Mapping[str, Mapping[str, Any]] | None = None,
    training_data: str = "",
    datasets: list[str] | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    limitations: str = "",
) -> ModelCard:
    """Build the card. ``evaluations`` maps a dataset name to a ``multilabel_metrics`` result."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {sorted(FAMILIES)}")
    info = FAMILIES[family]
    evaluations = dict(evaluations or {})
    eval_results = [
        EvalResult(task_type=info["pipeline_tag"], dataset_type=name, dataset_name=name,
                   metric_type=metric, metric_value=round(float(res["macro"][metric]), 4),
                   metric_name=f"macro {metric.upper()}")
        for name, res in evaluations.items()
        for metric in ("auroc", "auprc")
    ]
    card_data = ModelCardData(
        model_name=model_id,
        library_name="transformers",
        pipeline_tag=info["pipeline_tag"],
        license=license,
        tags=["chest-x-ray", "medical-imaging", "cxrfm", family],
        datasets=datasets,
        base_model=base_model,
        eval_results=eval_results or None,
    )
    tables = {name: metrics_table(res) for name, res in evaluations.items()}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=model_id,
        summary=info["summary"],
        paper=info["paper"],
        architecture=architecture,
        training_data=training_data or "Not stated.",
        tables=tables,
        limitations=limitations,
    )

"""Model cards rendered from the evaluation results a recipe writes, one template per model family.

A card is the shared frame `cxrfm_model_card.md` around the family template `<family>.md` (description,
usage snippet, data and bias notes). Figures come only from the results dict, so the card states what was
run: the bootstrap resample count, CI level and seed of each evaluation, and the recipe's run facts.

Recipes call one function after saving their folder:

    write_results_and_card(folder, "glori", results, datasets=["phantom"], base_model="org/chexfound")

It writes `results.json` (the dict, verbatim) and `README.md` (the card) into `folder`. Conventions read from
`results` (all optional):

- every value that is a `cxrfm.evaluation.multilabel_metrics` result (a dict with "macro" and "per_class"),
  at the top level or under "evaluations", is an evaluation named by its key ("test", "validation", ...);
- "dataset": the dataset the evaluations ran on (default: the first of `datasets`, else "unspecified");
- "label_names": shown in the GLoRI description;
- every other top-level number, string or boolean is a run fact (steps, seconds, image counts...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from jinja2 import Template

TEMPLATE_DIR = Path(__file__).resolve().parent
TEMPLATE_PATH = TEMPLATE_DIR / "cxrfm_model_card.md"
RESULTS_FILENAME = "results.json"
CARD_FILENAME = "README.md"

_CHEXFOUND_PAPER = "Chest X-ray Foundation Model with Global and Local Representations Integration (arXiv:2502.05142)"
_CHEXFOUND_CITATION = """@article{yang2025chexfound,
  title   = {Chest X-ray Foundation Model with Global and Local Representations Integration},
  author  = {Yang, Zefan and Xu, Xuanang and Zhang, Jiajin and Wang, Ge and Kalra, Mannudeep K. and Yan, Pingkun},
  journal = {arXiv preprint arXiv:2502.05142},
  year    = {2025}
}"""

# What each family is, which paper it implements and its Hub metadata; the template is `<family>.md`.
FAMILIES: dict[str, dict[str, str]] = {
    "chexfound": {
        "summary": "CheXFound: a DINOv2-style ViT pretrained self-supervised on chest X-rays.",
        "paper": _CHEXFOUND_PAPER,
        "pipeline_tag": "image-feature-extraction",
        "citation": _CHEXFOUND_CITATION,
    },
    "glori": {
        "summary": "GLoRI: a cross-attention multi-label head on frozen CheXFound features.",
        "paper": _CHEXFOUND_PAPER,
        "pipeline_tag": "image-classification",
        "citation": _CHEXFOUND_CITATION,
    },
    "relaxed_clip": {
        "summary": "An image-text encoder fine-tuned on report sentences with a relaxed positive-pair "
        "similarity, for zero-shot pathology classification.",
        "paper": "Significantly Improving Zero-Shot X-ray Pathology Classification via Fine-tuning "
        "Pre-trained Image-Text Encoders (arXiv:2212.07050)",
        "pipeline_tag": "zero-shot-image-classification",
        "citation": """@article{jang2022relaxedclip,
  title   = {Significantly Improving Zero-Shot X-ray Pathology Classification via Fine-tuning Pre-trained Image-Text Encoders},
  author  = {Jang, Jongseong and Kyung, Daeun and Kim, Seung Hwan and Lee, Honglak and Bae, Kyunghoon and Choi, Edward},
  journal = {arXiv preprint arXiv:2212.07050},
  year    = {2022}
}""",
    },
    "mgca": {
        "summary": "MGCA: instance-, token- and prototype-level image-report alignment.",
        "paper": "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual "
        "Representation Learning (NeurIPS 2022)",
        "pipeline_tag": "image-feature-extraction",
        "citation": """@inproceedings{wang2022mgca,
  title     = {Multi-Granularity Cross-modal Alignment for Generalized Medical Visual Representation Learning},
  author    = {Wang, Fuying and Zhou, Yuyin and Wang, Shujun and Vardhanabhuti, Varut and Yu, Lequan},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2022}
}""",
    },
}
# CXR-CML is a relaxed-CLIP recipe (an extra objective of finetune_clip): same model class and template, plus the
# CML paper and citation.
FAMILY_ALIASES = {"cml": "relaxed_clip", "cxr_cml": "relaxed_clip", "relaxed-clip": "relaxed_clip"}
_CML_PAPER = ("CXR-CML: Improved zero-shot classification of long-tailed multi-label diseases in Chest X-Rays "
              "(arXiv:2507.19398)")
_CML_CITATION = """@article{madhipati2025cxrcml,
  title   = {CXR-CML: Improved zero-shot classification of long-tailed multi-label diseases in Chest X-Rays},
  author  = {Madhipati, Rajesh and Bhat, Sheethal and Buess, Lukas and Maier, Andreas},
  journal = {arXiv preprint arXiv:2507.19398},
  year    = {2025}
}"""
_METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"))
# config.json fields worth stating in the architecture line, in this order.
_ARCHITECTURE_FIELDS = ("model_type", "image_size", "patch_size", "hidden_size", "num_hidden_layers",
                        "num_attention_heads", "num_register_tokens", "projection_dim", "head", "n_last_blocks",
                        "num_labels")


def resolve_family(family: str) -> str:
    """Canonical family name (`"cml"` -> `"relaxed_clip"`); ValueError for an unknown one."""
    name = FAMILY_ALIASES.get(family, family)
    if name not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {sorted(FAMILIES)} (aliases: {sorted(FAMILY_ALIASES)}).")
    return name


def is_metrics_result(value: Any) -> bool:
    """True for a `multilabel_metrics` result: a dict with a "macro" dict holding "auroc", and "per_class"."""
    return isinstance(value, Mapping) and isinstance(value.get("macro"), Mapping) and "auroc" in value["macro"] \
        and "per_class" in value


def find_evaluations(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Name -> `multilabel_metrics` result for every evaluation in `results` (top level and "evaluations")."""
    found = {key: value for key, value in results.items() if is_metrics_result(value)}
    for key, value in (results.get("evaluations") or {}).items():
        if is_metrics_result(value):
            found[key] = value
    return found


def _format_value(value: float | None, ci) -> str:
    if value is None:
        return "undefined"
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def metrics_table(results: Mapping[str, Any]) -> str:
    """Markdown table of macro and per-class AUROC/AUPRC with their CIs (the level is `results["ci"]`)."""
    level = f"{float(results.get('ci', 0.95)) * 100:g}% CI"
    rows = [f"| finding | AUROC ({level}) | AUPRC ({level}) |", "|---|---|---|"]
    named = [("**macro**", results["macro"])] + list(results.get("per_class", {}).items())
    for name, m in named:
        rows.append(f"| {name} | {_format_value(m['auroc'], m.get('auroc_ci'))} | "
                    f"{_format_value(m['auprc'], m.get('auprc_ci'))} |")
    return "\n".join(rows)


def evaluation_protocol(results: Mapping[str, Any]) -> str:
    """One sentence on how the intervals were computed, from the result itself (never a fixed count)."""
    n_bootstrap = int(results.get("n_bootstrap") or 0)
    per_class = results.get("per_class", {})
    n_images = max((m.get("n_positive", 0) + m.get("n_negative", 0) for m in per_class.values()), default=0)
    images = f" on {n_images:,} images" if n_images else ""
    if n_bootstrap == 0:
        return f"Point estimates{images}; no confidence intervals were computed (0 bootstrap resamples)."
    level = f"{float(results.get('ci', 0.95)) * 100:g}%"
    text = (f"Point estimates{images} with percentile-bootstrap {level} confidence intervals over images "
            f"({n_bootstrap:,} resamples, seed {results.get('seed', 'unrecorded')}).")
    skipped = results.get("skipped_classes") or {}
    if skipped:
        text += f" Left out of the macro average (undefined): {', '.join(sorted(skipped))}."
    return text


def _eval_results(evaluations, dataset: str, pipeline_tag: str) -> list[EvalResult]:
    out = []
    for split, res in evaluations.items():
        n_bootstrap = int(res.get("n_bootstrap") or 0)
        level = f"{float(res.get('ci', 0.95)) * 100:g}%"
        for key, label in _METRICS:
            value = res["macro"].get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            ci = res["macro"].get(f"{key}_ci")
            # model-index has no free-text description field: the CI goes in the metric's display name and,
            # machine-readable, in metric_args.
            if ci is not None and n_bootstrap:
                name = f"macro {label} ({level} CI {ci[0]:.3f}-{ci[1]:.3f}, {n_bootstrap} bootstrap resamples)"
                args = {"ci_low": round(float(ci[0]), 4), "ci_high": round(float(ci[1]), 4), "ci_level": res.get("ci"),
                        "n_bootstrap": n_bootstrap, "seed": res.get("seed")}
            else:
                name, args = f"macro {label} (no CI)", None
            out.append(EvalResult(task_type=pipeline_tag, dataset_type=dataset, dataset_name=dataset,
                                  dataset_split=split, metric_type=key, metric_value=round(float(value), 4),
                                  metric_name=name, metric_args=args))
    return out


def _run_facts(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts = []
    for key, value in results.items():
        if key in ("dataset", "label_names") or isinstance(value, (dict, list, tuple)) or value is None:
            continue
        facts.append((key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)))
    return facts


def _architecture_from_config(folder: Path | None) -> str:
    if folder is None or not (folder / "config.json").is_file():
        return "See `config.json`."
    config = json.loads((folder / "config.json").read_text())
    parts = [f"{key}={config[key]}" for key in _ARCHITECTURE_FIELDS if key in config]
    backbone = config.get("backbone_config")
    if isinstance(backbone, dict):
        parts += [f"backbone.{key}={backbone[key]}" for key in _ARCHITECTURE_FIELDS if key in backbone]
    classes = ", ".join(config.get("architectures") or [])
    return f"`{classes}`: " + ", ".join(parts) if classes else ", ".join(parts) or "See `config.json`."


def render_model_card(
    family: str,
    results: Mapping[str, Any] | None = None,
    *,
    model_id: str,
    architecture: str | None = None,
    folder: str | Path | None = None,
    training_data: str = "",
    datasets: list[str] | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
    limitations: str = "",
) -> ModelCard:
    """Build the card of a `family` model from a recipe's `results` dict (see the module docstring).

    `model_id` is the repo id (or folder) the usage snippet loads; `architecture` defaults to a line read
    from `folder/config.json`.
    """
    is_cml = FAMILY_ALIASES.get(family) == "relaxed_clip" and family != "relaxed-clip"
    family = resolve_family(family)
    info = dict(FAMILIES[family])
    if is_cml:
        info["paper"] = f"{_CML_PAPER}, on {info['paper']}"
        info["citation"] = f"{_CML_CITATION}\n{info['citation']}"
    results = dict(results or {})
    folder = Path(folder) if folder is not None else None
    evaluations = find_evaluations(results)
    dataset = str(results.get("dataset") or (datasets[0] if datasets else "unspecified"))
    eval_results = _eval_results(evaluations, dataset, info["pipeline_tag"])
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
    family_section = Template((TEMPLATE_DIR / f"{family}.md").read_text()).render(
        model_id=model_id,
        training_data=training_data or "Not stated by the recipe that saved this folder.",
        label_names=", ".join(results.get("label_names") or []) or "see `config.id2label`",
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_id=model_id,
        summary=info["summary"],
        paper=info["paper"],
        citation=info["citation"],
        family_section=family_section,
        architecture=architecture or _architecture_from_config(folder),
        evaluations=[{"name": f"{dataset} / {name}", "protocol": evaluation_protocol(res), "table": metrics_table(res)}
                     for name, res in evaluations.items()],
        run_facts=_run_facts(results),
        limitations=limitations,
    )


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    if isinstance(value, (tuple, set, Path)):
        return list(value) if not isinstance(value, Path) else str(value)
    raise TypeError(f"results: {type(value).__name__} value {value!r} is not JSON serialisable.")


def write_results_and_card(
    folder: str | Path,
    family: str,
    results: Mapping[str, Any],
    *,
    model_id: str | None = None,
    **card_kwargs,
) -> ModelCard:
    """Write `folder/results.json` (the results dict) and `folder/README.md` (its model card); return the card.

    Args:
        folder: the folder the recipe just saved with `save_pretrained` (it must exist).
        family: "chexfound", "glori", "relaxed_clip" (alias "cml") or "mgca".
        results: the recipe's results; evaluations are `multilabel_metrics` dicts (module docstring).
        model_id: the repo id the card's snippet loads (default: the folder name).
        card_kwargs: `training_data`, `datasets`, `base_model`, `license`, `limitations`, `architecture`
            (see `render_model_card`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"write_results_and_card: {folder} is not a folder; save the model there first.")
    text = json.dumps(dict(results), indent=1, default=_json_default)
    card = render_model_card(family, json.loads(text), model_id=model_id or folder.name, folder=folder,
                             **card_kwargs)
    (folder / RESULTS_FILENAME).write_text(text + "\n")
    card.save(folder / CARD_FILENAME)
    return card


__all__ = [
    "CARD_FILENAME",
    "FAMILIES",
    "RESULTS_FILENAME",
    "evaluation_protocol",
    "find_evaluations",
    "metrics_table",
    "render_model_card",
    "resolve_family",
    "write_results_and_card",
]

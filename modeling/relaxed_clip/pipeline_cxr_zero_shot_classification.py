"""`cxr-zero-shot-classification`: CheXzero-style zero-shot chest X-ray classification with an image-text dual
encoder (relaxed-CLIP paper, Eq. 1).

For each finding c a positive prompt "{c}" and a negative prompt "no {c}" are embedded (L2-normalised, averaged over
templates, normalised again) and p_c = softmax(s_+, s_-)[0] on the raw cosines (temperature 1), as CheXzero does.
Each finding gets an independent probability in the order given; unlike transformers'
`zero-shot-image-classification` (a softmax across the candidate labels) the findings do not compete.

Images go to the image processor unchanged (paths, bytes, DICOM, 16-bit PNG are read at full precision by
`CXRImageProcessor`; nothing is pre-decoded to 8-bit RGB). Every relaxed-CLIP folder carries this file
(`modeling_relaxed_clip.py` imports it, so `save_pretrained` copies it) and lists it in `config.custom_pipelines`;
it imports only installed libraries. The installed package registers the task below.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

# Copied from cxrfm.processing.text.CHEXZERO_TEMPLATES
CHEXZERO_TEMPLATES: tuple[tuple[str, str], ...] = (("{}", "no {}"),)


# Copied from cxrfm.processing.text.prompt_pairs
def prompt_pairs(
    label: str,
    templates: Sequence[tuple[str, str]] = CHEXZERO_TEMPLATES,
    fix_negated_labels: bool = False,
) -> tuple[list[str], list[str]]:
    """Positive and negative zero-shot prompts for one label (CheXzero "pair" softmax evaluation).

    Args:
        label: the class name, e.g. "Pleural Effusion".
        templates: (positive, negative) format strings with one ``{}``; the text embeddings of a
            label are averaged over templates.
        fix_negated_labels: CheXzero feeds "no No Finding" for "No Finding", which inverts that class
            (CheXzero issue #19, AUROC 0.07). True swaps in "no finding" / "finding" for labels that
            start with "No ". Default False = CheXzero as published.
    Returns:
        ``(positives, negatives)``, one string per template.
    """
    if not label or not label.strip():
        raise ValueError("prompt_pairs: label is empty.")
    for pair in templates:
        if len(pair) != 2 or any(template.count("{}") != 1 for template in pair):
            raise ValueError(f"Each template pair needs two strings with exactly one '{{}}', got {pair!r}.")
    if fix_negated_labels and label.lower().startswith("no "):
        condition = label[3:]
        positives = [negative.format(condition) for _, negative in templates]
        negatives = [positive.format(condition) for positive, _ in templates]
        return positives, negatives
    positives = [positive.format(label) for positive, _ in templates]
    negatives = [negative.format(label) for _, negative in templates]
    return positives, negatives


def pair_softmax_probabilities(
    image_embeds: torch.Tensor, positive_embeds: torch.Tensor, negative_embeds: torch.Tensor
) -> torch.Tensor:
    """Eq. (1): prob_c = softmax(s_{+,c}, s_{-,c})[0] = exp(s_+) / (exp(s_+) + exp(s_-)) with s = cosine similarity
    of the image to the positive / negative prompt (temperature 1, as CheXzero).

    Args:
        image_embeds: (N, D); positive_embeds, negative_embeds: (C, D). All are normalised here.
    Returns:
        (N, C) probabilities.
    """
    image_embeds = F.normalize(image_embeds, dim=-1)
    positive = image_embeds @ F.normalize(positive_embeds, dim=-1).T
    negative = image_embeds @ F.normalize(negative_embeds, dim=-1).T
    return torch.sigmoid(positive - negative)  # = the two-way softmax


class CXRZeroShotClassificationPipeline(Pipeline):
    """`pipeline("cxr-zero-shot-classification", model=folder)`:
    `classifier(image, findings=["Pleural Effusion", "Edema"])` -> `[{"finding": ..., "probability": ...}, ...]` in
    the order given, each an independent Eq. 1 probability. Options: `templates` (pairs of positive/negative format
    strings, each with one `{}`) and `fix_negated_labels` (default True: "No Finding" is scored with
    "finding"/"no finding" the right way round, see `prompt_pairs`)."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_video_processor = False  # None would make transformers look for one, and prompt about remote code
    _load_tokenizer = True

    def _sanitize_parameters(self, findings=None, templates=None, fix_negated_labels=None, **kwargs):
        if kwargs:
            raise TypeError(
                f"cxr-zero-shot-classification: unexpected options {sorted(kwargs)}; use findings, templates, "
                "fix_negated_labels."
            )
        preprocess = {}
        if findings is not None:
            preprocess["findings"] = list(findings)
        if templates is not None:
            preprocess["templates"] = [tuple(pair) for pair in templates]
        if fix_negated_labels is not None:
            preprocess["fix_negated_labels"] = fix_negated_labels
        return preprocess, {}, {}

    def preprocess(self, image, findings=None, templates=CHEXZERO_TEMPLATES, fix_negated_labels=True):
        if not findings:
            raise ValueError("cxr-zero-shot-classification needs findings=[...], e.g. ['Pleural Effusion'].")
        inputs = self.image_processor(images=[image], return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        positives, negatives = [], []
        for finding in findings:
            positive, negative = prompt_pairs(finding, templates, fix_negated_labels=fix_negated_labels)
            positives += positive
            negatives += negative
        inputs["text_inputs"] = self.tokenizer(positives + negatives, padding=True, truncation=True, return_tensors="pt")
        inputs["findings"] = findings
        inputs["num_templates"] = len(templates)
        return inputs

    def _forward(self, inputs):
        findings, num_templates = inputs.pop("findings"), inputs.pop("num_templates")
        text_inputs = inputs.pop("text_inputs")
        image = F.normalize(self.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
        texts = F.normalize(self.model.get_text_features(**text_inputs).pooler_output, dim=-1)
        per_label = F.normalize(texts.reshape(2, len(findings), num_templates, -1).mean(dim=2), dim=-1)
        return {"findings": findings, "probabilities": pair_softmax_probabilities(image, per_label[0], per_label[1])[0]}

    def postprocess(self, outputs):
        return [
            {"finding": finding, "probability": float(probability)}
            for finding, probability in zip(outputs["findings"], outputs["probabilities"])
        ]


# Library route only: a remote-code copy must not claim the task for every later folder.
if __name__.split(".")[0] == "cxrfm":
    PIPELINE_REGISTRY.register_pipeline(
        "cxr-zero-shot-classification",
        pipeline_class=CXRZeroShotClassificationPipeline,
        pt_model=AutoModel,
        type="multimodal",
    )

__all__ = ["CHEXZERO_TEMPLATES", "CXRZeroShotClassificationPipeline", "pair_softmax_probabilities", "prompt_pairs"]

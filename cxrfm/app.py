"""`cxrfm app`: a browser app (Gradio) around a GLoRI classifier folder and, optionally, a RelaxedCLIP folder.

The user uploads one chest X-ray (DICOM, 8/16-bit PNG, JPEG) and sees:
- each finding's GLoRI probability (sigmoid of the logit), highest first;
- the GLoRI attention map of the top findings drawn over the image the model saw (`overlay_attention`);
- with a RelaxedCLIP folder, zero-shot probabilities (relaxed-CLIP Eq. 1, CheXzero prompts) for findings typed as
  free text, one per line or comma-separated.

The upload is read once with `load_cxr_image` at full precision (a 16-bit PNG or a DICOM is never squeezed through an
8-bit PIL conversion) and the same float image goes to both models' `CXRImageProcessor`. A file that cannot be read
shows the reader's message (file name and reason) in the page; it never becomes a traceback.

`analyse` is plain Python (testable without a browser); `build_app` wires it into Gradio Blocks; `launch` serves it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEFAULT_FINDINGS = "Pleural Effusion, Cardiomegaly, Edema"
MAX_OVERLAYS = 6
# What a failed read or preprocessing raises (reader errors name the file and the reason; PIL raises OSError).
READ_ERRORS = (ValueError, TypeError, FileNotFoundError, OSError)


@dataclass
class AppModels:
    """The loaded models: a GLoRI classifier with its image processor and, optionally, an image-text model with its
    image processor and tokenizer."""

    classifier: torch.nn.Module
    classifier_processor: object
    clip: torch.nn.Module | None = None
    clip_processor: object | None = None
    tokenizer: object | None = None
    label_names: list[str] = field(default_factory=list)


def load_models(glori: str | Path, clip: str | Path | None = None) -> AppModels:
    """Load a GLoRI (`GLoRIForMultiLabel`) folder and, optionally, a RelaxedCLIP folder holding a `CXRCLIPProcessor`.

    Raises FileNotFoundError / ValueError naming the folder when it is missing, is not the right kind of model, or has
    no image processor (the app would not know how to preprocess uploads).
    """
    import cxrfm  # noqa: F401  (registers the families, the image processor and the CLIP processor)
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoProcessor

    glori = Path(glori)
    _require_folder(glori, "--glori")
    config = AutoConfig.from_pretrained(glori)
    if getattr(config, "problem_type", None) != "multi_label_classification" or not hasattr(config, "head"):
        raise ValueError(f"--glori {glori}: model_type {config.model_type!r} is not a GLoRI multi-label classifier.")
    if not (glori / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"--glori {glori}: no preprocessor_config.json; save the model's CXRImageProcessor into the folder."
        )
    classifier = AutoModelForImageClassification.from_pretrained(glori).eval()
    models = AppModels(
        classifier=classifier,
        classifier_processor=AutoImageProcessor.from_pretrained(glori),
        label_names=[config.id2label[index] for index in range(config.num_labels)],
    )
    if clip is not None:
        clip = Path(clip)
        _require_folder(clip, "--clip")
        clip_config = AutoConfig.from_pretrained(clip)
        if not (hasattr(clip_config, "vision_config") and hasattr(clip_config, "text_config")):
            raise ValueError(
                f"--clip {clip}: model_type {clip_config.model_type!r} is not an image-text model (e.g. RelaxedCLIPModel)."
            )
        model = AutoModel.from_pretrained(clip).eval()
        processor = AutoProcessor.from_pretrained(clip)
        if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
            raise ValueError(f"--clip {clip}: no processor with an image processor and a tokenizer (CXRCLIPProcessor).")
        models.clip, models.clip_processor, models.tokenizer = model, processor.image_processor, processor.tokenizer
    return models


def _require_folder(folder: Path, option: str) -> None:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{option} {folder}: not a saved model folder (no config.json).")


def parse_findings(text: str | None) -> list[str]:
    """Free text -> findings: one per line or comma-separated, blanks dropped, duplicates kept once, order kept."""
    items = [item.strip() for item in re.split(r"[,\n]", text or "")]
    return list(dict.fromkeys(item for item in items if item))


def describe_read(name: str, grey: np.ndarray, meta: dict) -> str:
    """One line saying what was read and on which scale, e.g. "DICOM MONOCHROME2, 12 bits stored"."""
    if meta.get("format") == "dicom":
        kind = f"DICOM {meta.get('photometric_interpretation', '')}, {meta.get('bits_stored', '?')} bits stored"
    elif meta.get("format") == "pil":
        kind = f"image mode {meta.get('pil_mode', '?')}"
    else:
        kind = str(meta.get("format", "?"))
    low, high = meta.get("value_range") or (float(grey.min()), float(grey.max()))
    height, width = grey.shape
    return (f"Read **{name}** ({kind}, {width}x{height} px; values {low:g}-{high:g} mapped to 0-1 in float32, "
            "no 8-bit step)")


def _to_display(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> uint8 for the browser (display only; the models saw float32)."""
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def analyse(models: AppModels, path: str | Path | None, findings_text: str = "") -> dict:
    """Everything the page shows for one upload.

    Returns:
        dict with `status` (markdown: what was read, or why it could not be), `probabilities` (rows
        `[finding, "0.123"]`, highest first), `overlays` (list of `(uint8 RGB image, caption)`), `zero_shot`
        (rows `[finding, "0.123"]` in the typed order) and `ok`.
    """
    from cxrfm.evaluation.zero_shot import encode_images, pair_softmax_probabilities, prompt_embeddings
    from cxrfm.processing import load_cxr_image
    from cxrfm.visualization import overlay_attention

    empty = {"probabilities": [], "overlays": [], "zero_shot": [], "ok": False}
    if not path:
        return {**empty, "status": "Upload a chest X-ray (DICOM, PNG or JPEG) to start."}
    name = Path(path).name
    try:
        grey, meta = load_cxr_image(path, return_metadata=True, name=name)
        pixel_values = models.classifier_processor(images=grey, return_tensors="pt")["pixel_values"]
    except READ_ERRORS as error:
        logger.info("Upload %s rejected: %s", name, error)
        return {**empty, "status": f"**Could not read this file.** {error}"}

    with_attention = getattr(models.classifier.config, "head", "glori") == "glori"
    outputs = models.classifier(pixel_values=pixel_values, output_attentions=with_attention)
    scores = torch.sigmoid(outputs.logits[0].float()).numpy()
    order = np.argsort(-scores, kind="stable")
    probabilities = [[models.label_names[index], f"{scores[index]:.3f}"] for index in order]
    overlays = []
    if with_attention:
        for index in order[:MAX_OVERLAYS]:
            rgb = overlay_attention(pixel_values[0], outputs.attention_maps[0, index].numpy())
            overlays.append((_to_display(rgb), f"{models.label_names[index]} ({scores[index]:.3f})"))

    zero_shot = []
    findings = parse_findings(findings_text)
    if models.clip is not None and findings:
        clip_pixels = models.clip_processor(images=grey, return_tensors="pt")["pixel_values"]
        positive, negative = prompt_embeddings(models.clip, models.tokenizer, findings)
        zero_shot_scores = pair_softmax_probabilities(encode_images(models.clip, clip_pixels), positive, negative)[0]
        zero_shot = [[finding, f"{float(score):.3f}"] for finding, score in zip(findings, zero_shot_scores)]

    status = f"{describe_read(name, grey, meta)}; {len(probabilities)} findings scored."
    return {"status": status, "probabilities": probabilities, "overlays": overlays, "zero_shot": zero_shot, "ok": True}


def build_app(models: AppModels, title: str = "cxrfm: chest X-ray findings"):
    """Gradio Blocks: file upload + findings box -> status, GLoRI table, attention gallery, zero-shot table."""
    # No telemetry from a tool that handles medical images (and no network on air-gapped machines).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def run(path, findings_text):
        result = analyse(models, path, findings_text)
        return result["status"], result["probabilities"], result["overlays"], result["zero_shot"]

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {title}\nResearch use only: not a medical device, not for clinical decisions. Upload a DICOM, "
            "8/16-bit PNG or JPEG chest X-ray; it is read at full precision."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Chest X-ray (DICOM, PNG, JPEG)", type="filepath", elem_id="upload")
                findings = gr.Textbox(
                    label="Zero-shot findings (comma or one per line)", value=DEFAULT_FINDINGS, lines=2,
                    elem_id="findings", visible=models.clip is not None,
                )
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                status = gr.Markdown("Upload a chest X-ray (DICOM, PNG or JPEG) to start.", elem_id="status")
            with gr.Column(scale=2):
                table = gr.Dataframe(headers=["finding", "probability"], label="GLoRI probabilities",
                                     interactive=False, elem_id="glori-table")
                gallery = gr.Gallery(label="GLoRI attention (top findings)", columns=3, format="png",
                                     elem_id="overlays")
                zero_shot = gr.Dataframe(headers=["finding", "probability"], label="Zero-shot (RelaxedCLIP)",
                                         interactive=False, elem_id="zero-shot-table", visible=models.clip is not None)
        button.click(run, inputs=[upload, findings], outputs=[status, table, gallery, zero_shot])
    return app


def launch(glori, clip=None, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Load the models, build the app and serve it on `host:port`; with `block=False` return the running app
    (call `.close()` to stop it)."""
    app = build_app(load_models(glori, clip))
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=not block)
    return app


__all__ = ["AppModels", "analyse", "build_app", "launch", "load_models", "parse_findings"]

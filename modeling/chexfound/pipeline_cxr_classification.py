"""`cxr-classification`: multi-label chest X-ray classification with a sigmoid score per finding and, optionally,
each finding's GLoRI attention map.

Unlike transformers' `image-classification` pipeline, inputs go straight to the model's image processor (so
`CXRImageProcessor` reads DICOM, 16-bit PNG and paths itself; nothing is pre-decoded to 8-bit RGB), every finding
is returned by default (multi-label: no softmax, no implicit top 5), and attention maps can be requested.

Every GLoRI folder carries this file (`modeling_glori.py` imports it, so `save_pretrained` copies it) and lists it in
`config.custom_pipelines`; it imports only installed libraries. The installed package registers the task below.
"""

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForImageClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY


class CXRClassificationPipeline(Pipeline):
    """Scores every finding of a multi-label CXR model (e.g. `GLoRIForMultiLabel`).

    Call with one image or a list (path, bytes, PIL image, array, DICOM dataset: whatever the image processor
    reads). Options: `top_k` (keep the k highest scores, sorted; default all findings in model order),
    `return_attention_maps` (add `attention_map`, a float32 `(h, w)` patch-grid array summing to 1, per finding).

    Returns, per image, a list of `{"label": str, "score": float[, "attention_map": np.ndarray]}`.
    """

    _load_image_processor = True
    _load_processor = False
    _load_feature_extractor = False
    _load_video_processor = False  # None would make transformers look for one, and prompt about remote code
    _load_tokenizer = False

    def _sanitize_parameters(self, top_k: int | None = None, return_attention_maps: bool | None = None):
        forward_params, postprocess_params = {}, {}
        if return_attention_maps is not None:
            forward_params["return_attention_maps"] = return_attention_maps
        if top_k is not None:
            if top_k < 1:
                raise ValueError(f"cxr-classification: top_k must be >= 1, got {top_k}.")
            postprocess_params["top_k"] = top_k
        return {}, forward_params, postprocess_params

    def preprocess(self, image: Any) -> dict[str, torch.Tensor]:
        model_inputs = self.image_processor(images=image, return_tensors="pt")
        return {"pixel_values": model_inputs["pixel_values"].to(self.dtype)}

    def _forward(self, model_inputs: dict[str, torch.Tensor], return_attention_maps: bool = False) -> dict:
        outputs = self.model(**model_inputs, output_attentions=return_attention_maps)
        return {"logits": outputs.logits, "attention_maps": outputs.attention_maps}

    def postprocess(self, model_outputs: dict, top_k: int | None = None) -> list[dict[str, Any]]:
        scores = torch.sigmoid(model_outputs["logits"][0].float()).numpy()
        maps = model_outputs["attention_maps"]
        results = []
        for index, score in enumerate(scores):
            result = {"label": self.model.config.id2label[index], "score": float(score)}
            if maps is not None:
                result["attention_map"] = maps[0, index].float().numpy().astype(np.float32)
            results.append(result)
        if top_k is not None:
            results = sorted(results, key=lambda item: item["score"], reverse=True)[:top_k]
        return results


# Library route only: a remote-code copy must not claim the task for every later folder.
if __name__.split(".")[0] == "cxrfm":
    PIPELINE_REGISTRY.register_pipeline(
        "cxr-classification",
        pipeline_class=CXRClassificationPipeline,
        pt_model=AutoModelForImageClassification,
        type="image",
    )

__all__ = ["CXRClassificationPipeline"]

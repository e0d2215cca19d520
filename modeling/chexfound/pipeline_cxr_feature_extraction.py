"""`cxr-feature-extraction`: CheXFound embeddings read at full precision.

transformers' `image-feature-extraction` pipeline decodes a path with `load_image` to 8-bit RGB before the image
processor sees it: a 16-bit PNG saturates (every such file gets the embedding of a white image) and a DICOM file
fails. This pipeline hands every input (path, bytes, PIL image, array, pydicom dataset) to the model's image
processor unchanged, so `CXRImageProcessor` reads 16-bit PNG and DICOM itself. Options and outputs are the stock
pipeline's: `pool=True` returns the pooled (CLS) embedding, otherwise all tokens; `return_tensors=True` returns a
tensor instead of nested lists.

Every CheXFound folder carries this file (`modeling_chexfound.py` imports it, so `save_pretrained` copies it) and
lists it in `config.custom_pipelines`; it imports only installed libraries.
"""

from typing import Any

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY


class CXRFeatureExtractionPipeline(Pipeline):
    """Embeds chest X-rays with a vision backbone (e.g. `CheXFoundModel`).

    Returns, per image, `last_hidden_state` `(1, T, D)` as nested lists (or `pooler_output` `(1, D)` with
    `pool=True`), as transformers' `image-feature-extraction` does.
    """

    _load_image_processor = True
    _load_processor = False
    _load_feature_extractor = False
    _load_video_processor = False  # None would make transformers look for one, and prompt about remote code
    _load_tokenizer = False

    def _sanitize_parameters(self, pool: bool | None = None, return_tensors: bool | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"cxr-feature-extraction: unexpected options {sorted(kwargs)}; use pool / return_tensors.")
        postprocess_params = {}
        if pool is not None:
            postprocess_params["pool"] = pool
        if return_tensors is not None:
            postprocess_params["return_tensors"] = return_tensors
        return {}, {}, postprocess_params

    def preprocess(self, image: Any) -> dict[str, torch.Tensor]:
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values.to(self.dtype)}

    def _forward(self, model_inputs: dict[str, torch.Tensor]):
        return self.model(**model_inputs)

    def postprocess(self, model_outputs, pool: bool = False, return_tensors: bool = False):
        if pool:
            if getattr(model_outputs, "pooler_output", None) is None:
                raise ValueError(f"cxr-feature-extraction: pool=True but {type(self.model).__name__} has no pooler_output.")
            outputs = model_outputs.pooler_output
        else:
            outputs = model_outputs.last_hidden_state
        return outputs if return_tensors else outputs.tolist()


# Library route only: a remote-code copy must not claim the task for every later folder.
if __name__.split(".")[0] == "cxrfm":
    PIPELINE_REGISTRY.register_pipeline(
        "cxr-feature-extraction", pipeline_class=CXRFeatureExtractionPipeline, pt_model=AutoModel, type="image"
    )

__all__ = ["CXRFeatureExtractionPipeline"]

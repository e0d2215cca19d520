"""Registers the `cxr-classification` pipeline with transformers (library route) and saves pipeline folders.

Importing this module makes `pipeline("cxr-classification", model=...)` work with the installed cxrfm.
`save_classification_pipeline` writes a folder (model + image processor + the pipeline's code, with
`config.custom_pipelines`) that `pipeline("cxr-classification", model=folder, trust_remote_code=True)` loads where
cxrfm is not installed (Hub route). The class lives in `cxrfm.modeling.chexfound.pipeline_cxr_classification` because
remote code is copied from the model folder, whose files import only installed libraries.
"""

import logging
from pathlib import Path

from transformers import AutoModelForImageClassification, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import cxrfm.modeling  # noqa: F401  (registers GLoRIConfig -> GLoRIForMultiLabel with the Auto classes)
from cxrfm.modeling.chexfound.pipeline_cxr_classification import CXRClassificationPipeline
from cxrfm.processing import CXRImageProcessor  # noqa: F401  (registers the image processor)

logger = logging.getLogger(__name__)

TASK = "cxr-classification"

PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=CXRClassificationPipeline, pt_model=AutoModelForImageClassification, type="image"
)


def save_classification_pipeline(model, image_processor, save_directory: str | Path) -> Path:
    """Save `model` and `image_processor` as a `cxr-classification` pipeline folder (remote code included).

    The folder also loads as a plain model (`AutoModelForImageClassification.from_pretrained(folder,
    trust_remote_code=True)`) and with transformers' standard `image-classification` pipeline, which applies a
    sigmoid because `config.problem_type == "multi_label_classification"`.
    """
    if getattr(type(image_processor), "_auto_class", None) is None:
        # Without an auto class, save_pretrained writes the processor's settings but not its code, and the folder
        # would need cxrfm installed.
        type(image_processor).register_for_auto_class("AutoImageProcessor")
    classifier = pipeline(TASK, model=model, image_processor=image_processor)
    classifier.save_pretrained(str(save_directory))
    logger.info("Saved %s pipeline (%s) to %s", TASK, type(model).__name__, save_directory)
    return Path(save_directory)


__all__ = ["TASK", "CXRClassificationPipeline", "save_classification_pipeline"]

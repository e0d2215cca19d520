"""cxrfm's pipelines, one per task, each living in its model folder so saved folders carry it as remote code:

- `cxr-classification` (`CXRClassificationPipeline`, GLoRI folders): a sigmoid score per finding, attention maps;
- `cxr-feature-extraction` (`CXRFeatureExtractionPipeline`, CheXFound folders): embeddings of inputs read at full
  precision (transformers' `image-feature-extraction` decodes paths to 8-bit first);
- `cxr-zero-shot-classification` (`CXRZeroShotClassificationPipeline`, relaxed-CLIP folders): one independent
  CheXzero probability per finding.

Each pipeline module registers its task with transformers when imported from the installed package (`import cxrfm`
does), so `pipeline(task, model=folder)` needs no `trust_remote_code` there; where cxrfm is not installed, every
folder's `config.custom_pipelines` points `pipeline(task, model=folder, trust_remote_code=True)` at its own copy.
"""

import logging
from pathlib import Path

from cxrfm.modeling.chexfound.pipeline_cxr_classification import CXRClassificationPipeline
from cxrfm.modeling.chexfound.pipeline_cxr_feature_extraction import CXRFeatureExtractionPipeline
from cxrfm.modeling.relaxed_clip.pipeline_cxr_zero_shot_classification import CXRZeroShotClassificationPipeline

logger = logging.getLogger(__name__)

TASK = "cxr-classification"
TASKS = {
    "cxr-classification": CXRClassificationPipeline,
    "cxr-feature-extraction": CXRFeatureExtractionPipeline,
    "cxr-zero-shot-classification": CXRZeroShotClassificationPipeline,
}


def save_classification_pipeline(model, image_processor, save_directory: str | Path) -> Path:
    """Save `model` (e.g. `GLoRIForMultiLabel`) and `image_processor` into one folder that runs `cxr-classification`
    (the model's `save_pretrained` writes the pipeline code and `config.custom_pipelines`; the processor writes its
    own code), and also loads as a plain model and with transformers' `image-classification` pipeline, which applies
    a sigmoid because `config.problem_type == "multi_label_classification"`."""
    model.save_pretrained(save_directory)
    image_processor.save_pretrained(save_directory)
    logger.info("Saved %s pipeline (%s) to %s", TASK, type(model).__name__, save_directory)
    return Path(save_directory)


__all__ = [
    "TASK",
    "TASKS",
    "CXRClassificationPipeline",
    "CXRFeatureExtractionPipeline",
    "CXRZeroShotClassificationPipeline",
    "save_classification_pipeline",
]

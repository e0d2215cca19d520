"""Relaxed-CLIP (paper 002): a transformers dual encoder fine-tuned with relaxed positive-pair losses."""

from .configuration_relaxed_clip import RELAXED_CLIP_PRESETS, RelaxedCLIPConfig
from .losses_relaxed_clip import (
    clip_loss,
    multi_positive_info_nce,
    relax_positive_pairs,
    relaxed_similarity,
    simclr_loss,
    slip_loss,
    uniclip_loss,
)
from .pipeline_cxr_zero_shot_classification import CXRZeroShotClassificationPipeline
from .modeling_relaxed_clip import RelaxedCLIPModel, RelaxedCLIPOutput, RelaxedCLIPPreTrainedModel, pool_tower_output

__all__ = [
    "CXRZeroShotClassificationPipeline",
    "RELAXED_CLIP_PRESETS",
    "RelaxedCLIPConfig",
    "RelaxedCLIPModel",
    "RelaxedCLIPOutput",
    "RelaxedCLIPPreTrainedModel",
    "clip_loss",
    "multi_positive_info_nce",
    "pool_tower_output",
    "relax_positive_pairs",
    "relaxed_similarity",
    "simclr_loss",
    "slip_loss",
    "uniclip_loss",
]

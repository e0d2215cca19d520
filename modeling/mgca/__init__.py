"""MGCA (paper 004): multi-granularity cross-modal alignment of chest X-rays and reports."""

from .configuration_mgca import MGCA_PRESETS, MGCAConfig
from .losses_mgca import (
    clip_token_weights,
    cpa_loss,
    cross_attention_parameter_free,
    ita_loss,
    sinkhorn_knopp,
    token_alignment_loss,
    total_loss,
)
from .modeling_mgca import (
    MGCAForImageClassification,
    MGCAModel,
    MGCAOutput,
    MGCAPreTrainedModel,
    merge_word_pieces,
    word_slots,
)
from .processing_mgca import MGCAProcessor, mgca_clean_report

__all__ = [
    "MGCA_PRESETS",
    "MGCAConfig",
    "MGCAForImageClassification",
    "MGCAModel",
    "MGCAOutput",
    "MGCAPreTrainedModel",
    "MGCAProcessor",
    "clip_token_weights",
    "cpa_loss",
    "cross_attention_parameter_free",
    "ita_loss",
    "merge_word_pieces",
    "mgca_clean_report",
    "sinkhorn_knopp",
    "token_alignment_loss",
    "total_loss",
    "word_slots",
]

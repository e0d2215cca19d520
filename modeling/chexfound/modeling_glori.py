"""GLoRI (Global and Local Representations Integration): CheXFound's multi-label head, and the linear probe.

Paper: CheXFound, arXiv 2502.05142, §III-C (Eq. 1-2) and §IV-B2. The head follows the official code
(RPIDIAL/CheXFound `chexfound/eval/classification/glori.py`, an ML-Decoder-style single-layer query decoder) so that
its released weights load unchanged (`convert_glori.py`).

Reading order: loss -> feature recipe -> decoder layer -> heads -> pretrained base -> model.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_glori import GLoRIConfig
from .modeling_chexfound import CheXFoundModel

# Imported so that `save_pretrained` copies the pipeline beside the weights (custom_object_save follows relative
# imports); `GLoRIConfig.hub_pipelines` names it in config.json.
from .pipeline_cxr_classification import CXRClassificationPipeline  # noqa: F401


def masked_multilabel_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over images and findings, ignoring unknown labels (§III-C: "each GLoRI output
    token is projected by a linear classifier supervised by a binary cross-entropy loss").

    As the official code computes it (`BCEWithLogitsLoss(weight=mask, reduction="sum")`, no pos_weight): a label is
    used when it is 0 or 1; -1 (uncertain) and NaN (not mentioned) get weight 0. The sum, not the mean, is what the
    official learning-rate grid was tuned under.

    Args:
        logits: `(B, C)` raw scores.
        labels: `(B, C)` in {0, 1, -1, NaN}.
    Returns:
        scalar loss.
    """
    if labels.shape != logits.shape:
        raise ValueError(f"labels must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}.")
    known = labels >= 0  # False for NaN and for -1
    targets = torch.where(known, labels, torch.zeros_like(labels)).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, weight=known.to(logits.dtype), reduction="sum")


def concat_last_blocks(
    intermediate_layers: tuple[tuple[torch.Tensor, torch.Tensor], ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official head input (`create_mldecoder_input` / `create_linear_input`): concatenate, along channels, the
    final-normed patch tokens and the CLS tokens of the last n blocks, shallowest block first.

    Args:
        intermediate_layers: n pairs `(patch_tokens (B, N, D), cls_token (B, D))` from
            `CheXFoundModel.get_intermediate_layers`.
    Returns:
        `(patch_tokens (B, N, n*D), cls_tokens (B, n*D))`.
    """
    patch_tokens = torch.cat([patch for patch, _ in intermediate_layers], dim=-1)
    cls_tokens = torch.cat([cls for _, cls in intermediate_layers], dim=-1)
    return patch_tokens, cls_tokens


@dataclass
class GLoRIOutput(ModelOutput):
    """Output of [`GLoRIForMultiLabel`].

    Args:
        loss: scalar masked BCE (summed), when `labels` are given.
        logits: `(B, C)` one score per finding; `sigmoid(logits)` is the probability.
        attention_maps: `(B, C, h, w)` cross-attention of each finding's query over the patch grid, averaged over
            heads (rows sum to 1 over h*w), when `output_attentions=True` (GLoRI head only).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    attention_maps: torch.FloatTensor | None = None


class GLoRIDecoderLayer(nn.Module):
    """The single decoder layer (official `TransformerDecoderLayerOptimal`, ML-Decoder): no self-attention between
    queries, one cross-attention (Eq. 2) and a ReLU feed-forward block, post-norm.

    Parameter names match the official layer, so its state dict loads without renaming.
    """

    def __init__(self, config: GLoRIConfig):
        super().__init__()
        dim, eps, p = config.decoder_dim, config.decoder_layer_norm_eps, config.dropout
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.dropout1 = nn.Dropout(p)
        self.multihead_attn = nn.MultiheadAttention(dim, config.num_heads, dropout=p, batch_first=True)
        self.dropout2 = nn.Dropout(p)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.linear1 = nn.Linear(dim, config.ffn_dim)
        self.dropout = nn.Dropout(p)
        self.linear2 = nn.Linear(config.ffn_dim, dim)
        self.dropout3 = nn.Dropout(p)
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            queries: `(B, C, E)` disease queries.
            memory: `(B, N, E)` projected patch tokens (keys and values).
        Returns:
            `(B, C, E)` output queries q' and, if `need_weights`, the `(B, heads, C, N)` attention probabilities.
        """
        # The official layer's first residual adds a dropped-out copy of the queries to themselves (where a
        # self-attention would be); in eval mode this is norm1(2 q). Kept for parity with the released weights.
        queries = self.norm1(queries + self.dropout1(queries))
        attended, weights = self.multihead_attn(
            queries, memory, memory, need_weights=need_weights, average_attn_weights=False
        )
        queries = self.norm2(queries + self.dropout2(attended))
        feed_forward = self.linear2(self.dropout(F.relu(self.linear1(queries))))
        queries = self.norm3(queries + self.dropout3(feed_forward))
        return queries, weights


class GLoRIHead(nn.Module):
    """Eq. 1-2 plus the global skip: project patch tokens, let one frozen query per finding attend to them, join the
    CLS features (`cat_cls`) and score each finding with its own linear (the official group FC)."""

    def __init__(self, config: GLoRIConfig):
        super().__init__()
        num_classes = config.num_labels
        self.cat_cls = config.cat_cls
        self.patch_projection = nn.Linear(config.feature_dim, config.decoder_dim)  # Linear^embed of Eq. 1
        # Frozen random queries q (official: nn.Embedding with requires_grad False). A buffer: saved with the
        # weights, never trained, never re-sampled on load; drawn in `_init_weights`.
        self.register_buffer("query_embed", torch.empty(num_classes, config.decoder_dim))
        self.decoder_layer = GLoRIDecoderLayer(config)
        token_dim = config.decoder_dim + (config.feature_dim if config.cat_cls else 0)
        self.group_fc_weight = nn.Parameter(torch.empty(num_classes, token_dim))
        self.group_fc_bias = nn.Parameter(torch.empty(num_classes))

    def forward(
        self, patch_tokens: torch.Tensor, cls_tokens: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            patch_tokens: `(B, N, F)` concatenated last-n-block patch tokens, F = `feature_dim`.
            cls_tokens: `(B, F)` concatenated last-n-block CLS tokens.
        Returns:
            logits `(B, C)` and, if `need_weights`, attention `(B, heads, C, N)`.
        """
        memory = F.relu(self.patch_projection(patch_tokens))  # Eq. 1
        queries = self.query_embed.unsqueeze(0).expand(patch_tokens.shape[0], -1, -1)
        local_tokens, weights = self.decoder_layer(queries, memory, need_weights)  # Eq. 2 (q')
        if self.cat_cls:
            # The same global vector is joined, first, to every finding's local token.
            global_tokens = cls_tokens.unsqueeze(1).expand(-1, local_tokens.shape[1], -1)
            local_tokens = torch.cat([global_tokens, local_tokens], dim=-1)
        logits = torch.einsum("bcd,cd->bc", local_tokens, self.group_fc_weight) + self.group_fc_bias
        return logits, weights


class LinearProbeHead(nn.Module):
    """The official linear probe (`LinearClassifier` on `create_linear_input`): one linear layer on the concatenated
    last-n-block CLS tokens, optionally followed by the mean of the last block's patch tokens (`linear_avgpool`)."""

    def __init__(self, config: GLoRIConfig):
        super().__init__()
        self.avgpool = config.linear_avgpool
        self.block_dim = config.backbone_config.hidden_size
        in_features = config.feature_dim + (self.block_dim if self.avgpool else 0)
        # Parameters held directly (official `linear.weight` / `linear.bias`) so that `_init_weights` sees them.
        self.weight = nn.Parameter(torch.empty(config.num_labels, in_features))
        self.bias = nn.Parameter(torch.empty(config.num_labels))

    def forward(
        self, patch_tokens: torch.Tensor, cls_tokens: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("GLoRIForMultiLabel: attention maps exist only for head='glori', not the linear probe.")
        features = cls_tokens
        if self.avgpool:
            last_block_patches = patch_tokens[..., -self.block_dim :]
            features = torch.cat([cls_tokens, last_block_patches.mean(dim=1)], dim=-1)
        return F.linear(features, self.weight, self.bias), None


class GLoRIPreTrainedModel(PreTrainedModel):
    config_class = GLoRIConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block", "GLoRIDecoderLayer"]
    _supports_sdpa = True

    @staticmethod
    def _reset_linear(linear: nn.Linear) -> None:
        """PyTorch's default Linear init (kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))), which the official
        head keeps."""
        init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
        if linear.bias is not None:
            bound = 1 / math.sqrt(linear.weight.shape[1])
            init.uniform_(linear.bias, -bound, bound)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Official head init. The backbone is a sub-model and keeps its own `_init_weights`.

        transformers only visits remote-code modules that own parameters directly, so each head initialises its
        whole subtree here (the decoder layer's sub-modules included).
        """
        if isinstance(module, GLoRIHead):
            init.normal_(module.query_embed, mean=0.0, std=1.0)  # §IV-B2: queries ~ N(0, 1)
            init.xavier_normal_(module.group_fc_weight)
            init.zeros_(module.group_fc_bias)
            self._reset_linear(module.patch_projection)
            layer = module.decoder_layer
            init.xavier_uniform_(layer.multihead_attn.in_proj_weight)
            init.zeros_(layer.multihead_attn.in_proj_bias)
            self._reset_linear(layer.multihead_attn.out_proj)
            init.zeros_(layer.multihead_attn.out_proj.bias)
            for linear in (layer.linear1, layer.linear2):
                self._reset_linear(linear)
            for norm in (layer.norm1, layer.norm2, layer.norm3):
                init.ones_(norm.weight)
                init.zeros_(norm.bias)
        elif isinstance(module, LinearProbeHead):
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)


class GLoRIForMultiLabel(GLoRIPreTrainedModel):
    """CheXFound backbone + GLoRI (or linear-probe) head for multi-label CXR classification.

    The head reads the backbone's last-`n_last_blocks` features; `forward` takes either images or those features
    precomputed (`backbone_features`, e.g. from an on-disk cache), so a frozen backbone runs once per image.
    """

    def __init__(self, config: GLoRIConfig):
        super().__init__(config)
        self.backbone = CheXFoundModel(config.backbone_config)
        self.head = GLoRIHead(config) if config.head == "glori" else LinearProbeHead(config)
        self.post_init()

    def new_head(self) -> nn.Module:
        """A freshly initialised head for this config, e.g. one per learning rate of the official grid."""
        head = GLoRIHead(self.config) if self.config.head == "glori" else LinearProbeHead(self.config)
        for module in head.modules():
            self._init_weights(module)
        return head.to(self.device)

    @classmethod
    def from_backbone(cls, backbone: CheXFoundModel, **config_kwargs) -> "GLoRIForMultiLabel":
        """A model around an existing (e.g. pretrained) backbone; the head is freshly initialised from
        `GLoRIConfig(backbone_config=backbone.config, **config_kwargs)`."""
        model = cls(GLoRIConfig(backbone_config=backbone.config, **config_kwargs))
        model.backbone = backbone
        return model

    def extract_backbone_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(patch_tokens (B, N, F), cls_tokens (B, F))`, F = n_last_blocks * D: the head's input."""
        layers = self.backbone.get_intermediate_layers(pixel_values, n=self.config.n_last_blocks)
        return concat_last_blocks(layers)

    def _check_backbone_features(self, backbone_features) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(backbone_features, (tuple, list)) or len(backbone_features) != 2:
            raise ValueError(
                "GLoRIForMultiLabel: backbone_features must be a pair (patch_tokens (B, N, F), cls_tokens (B, F)) as "
                "returned by extract_backbone_features."
            )
        patch_tokens, cls_tokens = backbone_features
        width = self.config.feature_dim
        if patch_tokens.ndim != 3 or cls_tokens.ndim != 2 or patch_tokens.shape[-1] != width:
            raise ValueError(
                f"GLoRIForMultiLabel: expected patch_tokens (B, N, {width}) and cls_tokens (B, {width}) "
                f"(n_last_blocks={self.config.n_last_blocks} x hidden_size={self.config.backbone_config.hidden_size}), "
                f"got {tuple(patch_tokens.shape)} and {tuple(cls_tokens.shape)}."
            )
        if cls_tokens.shape != (patch_tokens.shape[0], width):
            raise ValueError(
                f"GLoRIForMultiLabel: cls_tokens must be ({patch_tokens.shape[0]}, {width}), got {tuple(cls_tokens.shape)}."
            )
        # The official head casts features to float; a cache may store them in half precision.
        dtype = next(self.head.parameters()).dtype
        return patch_tokens.to(dtype), cls_tokens.to(dtype)

    @staticmethod
    def _patch_grid(num_patches: int, pixel_values: torch.Tensor | None, patch_size: int) -> tuple[int, int]:
        if pixel_values is not None:
            return pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"GLoRIForMultiLabel: cannot reshape {num_patches} patches to a square grid for attention maps; pass "
                "pixel_values (the grid is then read from the image size)."
            )
        return side, side

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        backbone_features: tuple[torch.Tensor, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> GLoRIOutput:
        r"""
        Args:
            pixel_values: `(B, 3, H, W)` normalised images (H, W multiples of the patch size).
            backbone_features: instead of images, `(patch_tokens (B, N, F), cls_tokens (B, F))` from
                `extract_backbone_features` (F = n_last_blocks * hidden_size).
            labels: `(B, C)` in {0, 1}; -1 and NaN entries are ignored by the loss.
            output_attentions: also return per-finding attention maps `(B, C, h, w)` (GLoRI head only).
        """
        if (pixel_values is None) == (backbone_features is None):
            raise ValueError("GLoRIForMultiLabel: pass exactly one of pixel_values or backbone_features.")
        if pixel_values is not None:
            backbone_features = self.extract_backbone_features(pixel_values)
        patch_tokens, cls_tokens = self._check_backbone_features(backbone_features)

        logits, attention = self.head(patch_tokens, cls_tokens, need_weights=output_attentions)
        loss = masked_multilabel_bce_loss(logits, labels.to(logits.device)) if labels is not None else None

        attention_maps = None
        if output_attentions:
            height, width = self._patch_grid(
                patch_tokens.shape[1], pixel_values, self.config.backbone_config.patch_size
            )
            attention_maps = attention.mean(dim=1).reshape(logits.shape[0], logits.shape[1], height, width)
        return GLoRIOutput(loss=loss, logits=logits, attention_maps=attention_maps)


GLoRIForMultiLabel.register_for_auto_class("AutoModelForImageClassification")
if __name__.split(".")[0] == "cxrfm":  # library route; see modeling_chexfound.py
    AutoModelForImageClassification.register(GLoRIConfig, GLoRIForMultiLabel, exist_ok=True)

__all__ = [
    "GLoRIDecoderLayer",
    "GLoRIForMultiLabel",
    "GLoRIHead",
    "GLoRIOutput",
    "GLoRIPreTrainedModel",
    "LinearProbeHead",
    "concat_last_blocks",
    "masked_multilabel_bce_loss",
]

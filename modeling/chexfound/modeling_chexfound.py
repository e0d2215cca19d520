"""CheXFound vision backbone as a transformers model, built on timm's `VisionTransformer`.

Reading order: helper functions (SwiGLU width, position-embedding interpolation, attention maps) ->
`CheXFoundVisionTransformer` (timm ViT with CheXFound's token layout) -> `CheXFoundPreTrainedModel`
(initialisation) -> `CheXFoundModel` (transformers outputs, last-N-layer features).

Facts from the official code (RPIDIAL/CheXFound, a DINOv2 fork) that this file reproduces:
- sequence = [CLS, registers, patches]; the position embedding covers CLS + the patch grid, registers get none;
- SwiGLU FFN with packed `w12` (rows: first half W1, second half W2) and `w3`: h = silu(x W1) * (x W2);
- position embeddings are resampled bicubically with a scale factor (grid + 0.1) / stored_grid, no antialias,
  and not at all at the native size;
- features for heads = last 4 blocks, each through the final LayerNorm, registers dropped.
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerScale, Mlp, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple

from .configuration_chexfound import CheXFoundConfig

# Imported so that `save_pretrained` copies the pipeline beside the weights (custom_object_save follows relative
# imports); `CheXFoundConfig.hub_pipelines` names it in config.json.
from .pipeline_cxr_feature_extraction import CXRFeatureExtractionPipeline  # noqa: F401


def swiglu_hidden_features(hidden_size: int, mlp_ratio: float) -> int:
    """Hidden width of the DINOv2/CheXFound SwiGLU FFN: 2/3 of the MLP width, rounded up to a multiple
    of 8 (ViT-L: int(1024 * 4) -> 2736)."""
    return (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def interpolate_patch_pos_embed(
    patch_pos_embed: torch.Tensor, grid_size: tuple[int, int], offset: float, antialias: bool
) -> torch.Tensor:
    """Resample patch position embeddings with the official CheXFound/DINOv2 rule.

    Args:
        patch_pos_embed: `(1, M * M, D)` embeddings of the stored square M x M grid (CLS slot excluded).
        grid_size: target `(height, width)` in patches.
        offset: with offset > 0 the bicubic resize uses `scale_factor = (grid + offset) / M` (the official
            way, whose float rounding differs slightly from a target size); 0 resizes to `grid_size`.
        antialias: antialiasing of the bicubic resize (CheXFound: False).

    Returns:
        `(1, height * width, D)` float32 embeddings.
    """
    _, num_positions, dim = patch_pos_embed.shape
    stored = math.isqrt(num_positions)
    if stored * stored != num_positions:
        raise ValueError(f"Position embeddings cover {num_positions} patches, which is not a square grid.")
    height, width = grid_size
    grid = patch_pos_embed.float().reshape(1, stored, stored, dim).permute(0, 3, 1, 2)
    if offset:
        resize = {"scale_factor": ((height + offset) / stored, (width + offset) / stored)}
    else:
        resize = {"size": (height, width)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **resize)
    if tuple(grid.shape[-2:]) != (height, width):
        raise ValueError(f"Position-embedding interpolation gave grid {tuple(grid.shape[-2:])}, expected {grid_size}.")
    return grid.permute(0, 2, 3, 1).reshape(1, height * width, dim)


def self_attention_probabilities(attention: nn.Module, normed_hidden_states: torch.Tensor) -> torch.Tensor:
    """Attention map softmax(q k^T / sqrt(d_head)) of a timm `Attention` module.

    q and k are recomputed from the module's own `qkv` weights, so the block itself keeps running timm's
    fused SDPA path and this extra matmul is paid only when attention maps are requested.

    Args:
        attention: a `timm.layers.Attention` (the block's `attn`).
        normed_hidden_states: `(B, T, D)` block input after the block's `norm1`.

    Returns:
        `(B, num_heads, T, T)` attention probabilities; rows sum to 1.
    """
    batch_size, num_tokens, _ = normed_hidden_states.shape
    qkv = attention.qkv(normed_hidden_states)
    qkv = qkv.reshape(batch_size, num_tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    query, key = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    return ((query * attention.scale) @ key.transpose(-2, -1)).softmax(dim=-1)


class CheXFoundVisionTransformer(VisionTransformer):
    """timm `VisionTransformer` with the CheXFound token layout and iBOT mask token.

    The transformer blocks, patch embedding, LayerScale, SwiGLU and final norm are timm's. Only the token
    preparation differs: timm's `no_embed_class=True` would leave CLS without a position embedding and its
    default would give registers one, while CheXFound adds `pos_embed` `(1, 1 + N, D)` to [CLS, patches]
    and then inserts the registers between them. `_pos_embed` is overridden to do exactly that, so timm's
    `forward_features` / `forward_intermediates` produce CheXFound features.

    Parameters beyond timm's: `pos_embed` (CLS + patch grid at `config.image_size`) and `mask_token` `(1, D)`.
    """

    def __init__(self, config: CheXFoundConfig):
        if config.use_swiglu_ffn:
            # timm's SwiGLUPacked computes silu(first half of fc1) * (second half): the official packed
            # w12 (fc1) / w3 (fc2). timm's Block sizes fc1 as int(dim * mlp_ratio), so pass the ratio giving
            # 2 * SwiGLU width; the +0.5 keeps int() from truncating a float product like 5471.9999.
            packed_width = 2 * swiglu_hidden_features(config.hidden_size, config.mlp_ratio)
            mlp_layer, mlp_ratio, act_layer = SwiGLUPacked, (packed_width + 0.5) / config.hidden_size, "silu"
        else:
            mlp_layer, mlp_ratio, act_layer = Mlp, config.mlp_ratio, config.hidden_act
        super().__init__(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            num_classes=0,
            global_pool="token",
            embed_dim=config.hidden_size,
            depth=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=config.qkv_bias,
            init_values=config.layerscale_value,
            class_token=True,
            reg_tokens=config.num_register_tokens,
            no_embed_class=True,
            pos_embed="none",  # our own pos_embed below: it covers CLS as well as the patches
            dynamic_img_size=True,  # patch_embed returns (B, H, W, D) for any size divisible by the patch
            drop_path_rate=0.0 if config.drop_path_uniform else config.drop_path_rate,
            norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
            act_layer=act_layer,
            mlp_layer=mlp_layer,
            weight_init="skip",  # CheXFoundPreTrainedModel._init_weights applies the official init
        )
        if config.drop_path_uniform and config.drop_path_rate > 0:
            # DINOv2/CheXFound use one rate in every block; timm's constructor only offers a linear ramp.
            for block in self.blocks:
                block.drop_path1 = DropPath(config.drop_path_rate)
                block.drop_path2 = DropPath(config.drop_path_rate)
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + self.patch_embed.num_patches, config.hidden_size))
        self.mask_token = nn.Parameter(torch.empty(1, config.hidden_size))
        self.interpolate_offset = config.interpolate_offset
        self.interpolate_antialias = config.interpolate_antialias

    def pos_embed_for_grid(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Position embeddings `(1, 1 + height * width, D)` for a patch grid; stored ones at the native grid."""
        if (height, width) == tuple(self.patch_embed.grid_size):
            return self.pos_embed  # no resampling at the native size: bit-exact with the official model
        patch_pos_embed = interpolate_patch_pos_embed(
            self.pos_embed[:, 1:], (height, width), self.interpolate_offset, self.interpolate_antialias
        )
        return torch.cat([self.pos_embed[:, :1].float(), patch_pos_embed], dim=1).to(dtype)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, D) patch embeddings -> (B, 1 + R + H * W, D) tokens [CLS, registers, patches]."""
        batch_size, height, width, dim = x.shape
        x = torch.cat([self.cls_token.expand(batch_size, -1, -1), x.reshape(batch_size, height * width, dim)], dim=1)
        x = x + self.pos_embed_for_grid(height, width, x.dtype)
        if self.reg_token is not None:
            x = torch.cat([x[:, :1], self.reg_token.expand(batch_size, -1, -1), x[:, 1:]], dim=1)
        return self.pos_drop(x)

    def prepare_tokens(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Embed `(B, C, H, W)` pixels into `(B, 1 + R + N, D)` tokens; masked patches become `mask_token`
        before CLS and position embeddings are added (as in iBOT pretraining)."""
        x = self.patch_embed(pixel_values)
        if bool_masked_pos is not None:
            mask = bool_masked_pos.reshape(x.shape[:3]).unsqueeze(-1)
            x = torch.where(mask, self.mask_token.to(x.dtype), x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)


class CheXFoundPreTrainedModel(PreTrainedModel):
    config_class = CheXFoundConfig
    base_model_prefix = "chexfound"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]  # timm's transformer block
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Official DINOv2/CheXFound init: pos_embed trunc-normal(std), CLS/registers normal(1e-6), mask token 0,
        Linear trunc-normal(std) with zero bias, patch Conv2d PyTorch default, LayerNorm 1/0, LayerScale gamma."""
        std = self.config.initializer_range
        if isinstance(module, CheXFoundVisionTransformer):
            init.trunc_normal_(module.pos_embed, std=std)
            init.normal_(module.cls_token, std=1e-6)
            if module.reg_token is not None:
                init.normal_(module.reg_token, std=1e-6)
            init.zeros_(module.mask_token)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # The official init leaves the patch projection at PyTorch's default (kaiming-uniform, a=sqrt(5)).
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LayerScale):
            init.constant_(module.gamma, self.config.layerscale_value)


class CheXFoundModel(CheXFoundPreTrainedModel):
    """CheXFound backbone. `forward` returns transformers outputs; `get_intermediate_layers` returns the
    last-N-layer features the GLoRI head and linear probes use. The timm module is `self.vit`.

    Attention always runs timm's fused SDPA (whatever `attn_implementation` says); `output_attentions=True`
    adds the attention maps, recomputed beside each block by `self_attention_probabilities`.
    """

    def __init__(self, config: CheXFoundConfig):
        super().__init__(config)
        self.vit = CheXFoundVisionTransformer(config)
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vit.patch_embed

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ) -> None:
        """Hook of `activation_checkpointing_enable/disable`: toggles timm's per-block checkpointing."""
        if every_n_layers != 1:
            raise ValueError(
                f"CheXFoundModel checkpoints every block; every_n_layers={every_n_layers} is not supported."
            )
        self.vit.set_grad_checkpointing(enable)
        self.gradient_checkpointing = enable
        self._gradient_checkpointing_func = gradient_checkpointing_func

    def _check_inputs(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> None:
        channels, patch = self.config.num_channels, self.config.patch_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"CheXFoundModel: pixel_values must have shape (batch, {channels}, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        if height % patch or width % patch:
            trained = self.config.image_size
            raise ValueError(
                f"CheXFoundModel: input size {height}x{width} is not divisible by patch_size={patch}; resize or crop "
                f"to a multiple of {patch} (the model was trained at {trained}x{trained})."
            )
        expected = (pixel_values.shape[0], (height // patch) * (width // patch))
        if bool_masked_pos is not None and (
            bool_masked_pos.dtype != torch.bool or tuple(bool_masked_pos.shape) != expected
        ):
            raise ValueError(
                f"CheXFoundModel: bool_masked_pos must be a bool tensor of shape {expected} (batch, patches), "
                f"got {bool_masked_pos.dtype} {tuple(bool_masked_pos.shape)}."
            )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values: `(B, C, H, W)` normalised images; H and W divisible by `patch_size`.
            bool_masked_pos: `(B, N)` bool, True where a patch embedding is replaced by `mask_token` (iBOT).
            output_attentions: also return each block's `(B, heads, T, T)` attention probabilities.
            output_hidden_states: also return the embeddings and every block's output (before the final norm).

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` `(B, T, D)`, T = 1 + R + N tokens
            [CLS, registers, patches] after the final LayerNorm; `pooler_output` `(B, D)` = its CLS token;
            `hidden_states` (L + 1 tensors `(B, T, D)`) and `attentions` (L tensors) when requested.
        """
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        self._check_inputs(pixel_values, bool_masked_pos)

        hidden_states = self.vit.prepare_tokens(pixel_values, bool_masked_pos)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        checkpointing = self.vit.grad_checkpointing and torch.is_grad_enabled()
        for block in self.vit.blocks:
            if output_attentions:
                all_attentions.append(self_attention_probabilities(block.attn, block.norm1(hidden_states)))
            if checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states)
            else:
                hidden_states = block(hidden_states)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        sequence_output = self.vit.norm(hidden_states)

        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )

    def get_intermediate_layers(
        self, pixel_values: torch.Tensor, n: int | list[int] = 4
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Features of the last `n` blocks (or of the block indices in `n`), the official feature recipe.

        Each block output goes through the final LayerNorm; registers are dropped.

        Returns:
            tuple of `n` pairs `(patch_tokens (B, N, D), cls_token (B, D))`, shallowest block first.
        """
        self._check_inputs(pixel_values)
        per_block = self.vit.forward_intermediates(
            pixel_values,
            indices=n,
            return_prefix_tokens=True,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        # timm splits off its num_prefix_tokens = 1 + R leading tokens: [CLS, registers].
        return tuple((patch_tokens, prefix_tokens[:, 0]) for patch_tokens, prefix_tokens in per_block)


# Hub route: save_pretrained copies this file and its siblings and writes auto_map.AutoModel.
CheXFoundModel.register_for_auto_class("AutoModel")
# Library route: only the installed package registers (a remote-code copy must not claim the config class).
if __name__.split(".")[0] == "cxrfm":
    AutoModel.register(CheXFoundConfig, CheXFoundModel, exist_ok=True)

__all__ = [
    "CheXFoundModel",
    "CheXFoundPreTrainedModel",
    "CheXFoundVisionTransformer",
    "interpolate_patch_pos_embed",
    "self_attention_probabilities",
    "swiglu_hidden_features",
]

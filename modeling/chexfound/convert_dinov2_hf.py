"""Convert a transformers `Dinov2Model` (e.g. RAD-DINO's layout: ViT-B/14, no registers, GELU MLP) into a
`CheXFoundModel` with identical outputs, so it can be used like CheXFound and continue DINOv2 pretraining.

Both are DINOv2 ViTs; the conversion is a key rename plus a config mapping:
- `embeddings.{cls_token, mask_token, position_embeddings, patch_embeddings.projection}` ->
  `vit.{cls_token, mask_token, pos_embed, patch_embed.proj}`; `layernorm` -> `vit.norm`;
- per layer: query/key/value (`attention.{q,k,v}_proj`, older files `attention.attention.{query,key,value}`) are
  stacked row-wise into timm's fused `attn.qkv`; `attention.o_proj` / `attention.output.dense` -> `attn.proj`;
  `layer_scale{1,2}.lambda1` -> `ls{1,2}.gamma`; `mlp.fc1/fc2` (or SwiGLU `mlp.weights_in/weights_out`) ->
  `mlp.fc1/fc2`; norms keep their names.
- transformers resizes position embeddings bicubically to the target size (no offset, no antialias), so the
  converted config uses `interpolate_offset=0` and `interpolate_antialias=False`; outputs then also match at other
  input sizes, not only at the native one.
Dinov2 checkpoints have no DINO/iBOT heads; continued pretraining initialises them (and logs that it does).
"""

import logging

import torch

from .configuration_chexfound import CheXFoundConfig
from .modeling_chexfound import CheXFoundModel

logger = logging.getLogger(__name__)

_EMBEDDING_RENAMES = {
    "embeddings.cls_token": "vit.cls_token",
    "embeddings.mask_token": "vit.mask_token",
    "embeddings.position_embeddings": "vit.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "vit.patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "vit.patch_embed.proj.bias",
    "layernorm.weight": "vit.norm.weight",
    "layernorm.bias": "vit.norm.bias",
}
_LAYER_RENAMES = {
    "norm1.": "norm1.", "norm2.": "norm2.",
    "attention.o_proj.": "attn.proj.", "attention.output.dense.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.", "mlp.weights_in.": "mlp.fc1.", "mlp.weights_out.": "mlp.fc2.",
}
_QKV_NAMES = (("attention.q_proj.", "attention.k_proj.", "attention.v_proj."),
              ("attention.attention.query.", "attention.attention.key.", "attention.attention.value."))


def chexfound_config_from_dinov2(config) -> CheXFoundConfig:
    """`CheXFoundConfig` of the same network as a transformers `Dinov2Config`."""
    if not config.use_swiglu_ffn and config.hidden_act != "gelu":
        raise ValueError(f"Dinov2 hidden_act {config.hidden_act!r} is not supported (CheXFound's MLP uses 'gelu').")
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    patch_size = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return CheXFoundConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        mlp_ratio=config.mlp_ratio,
        hidden_act="gelu",
        layerscale_value=config.layerscale_value,
        use_swiglu_ffn=config.use_swiglu_ffn,
        num_register_tokens=0,
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias=config.qkv_bias,
        initializer_range=config.initializer_range,
        interpolate_offset=0.0,
        interpolate_antialias=False,
    )


def convert_dinov2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dinov2Model tensors (optionally under `dinov2.`) -> CheXFoundModel tensors; unknown keys are a ValueError."""
    state = {k[len("dinov2."):] if k.startswith("dinov2.") else k: v for k, v in state_dict.items()}
    converted, used = {}, set()
    for key, new in _EMBEDDING_RENAMES.items():
        if key in state:
            converted[new] = state[key]
            used.add(key)
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for i in layers:
        prefix = f"encoder.layer.{i}."
        for names in _QKV_NAMES:
            for suffix in ("weight", "bias"):
                keys = [prefix + name + suffix for name in names]
                if all(k in state for k in keys):
                    converted[f"vit.blocks.{i}.attn.qkv.{suffix}"] = torch.cat([state[k] for k in keys])
                    used.update(keys)
        for key in [k for k in state if k.startswith(prefix) and k not in used]:
            rest = key[len(prefix):]
            for old, new in _LAYER_RENAMES.items():
                if rest.startswith(old):
                    converted[f"vit.blocks.{i}.{new}{rest[len(old):]}"] = state[key]
                    used.add(key)
                    break
    unknown = sorted(set(state) - used)
    if unknown:
        raise ValueError(f"Dinov2 tensors with no CheXFound counterpart: {unknown[:20]}.")
    return converted


@torch.no_grad()
def convert_dinov2_model(dinov2, atol: float = 1e-5) -> CheXFoundModel:
    """CheXFoundModel with the weights of a loaded `Dinov2Model`, proven equal on a random input.

    Raises:
        ValueError: on missing/unexpected keys (strict load) or outputs that differ by more than `atol`.
    """
    config = chexfound_config_from_dinov2(dinov2.config)
    model = CheXFoundModel(config).eval()
    model.load_state_dict(convert_dinov2_state_dict(dinov2.state_dict()), strict=True)
    side = config.image_size
    pixels = torch.randn(2, config.num_channels, side, side, generator=torch.Generator().manual_seed(0))
    was_training = dinov2.training
    dinov2.eval()
    expected = dinov2(pixel_values=pixels).last_hidden_state
    dinov2.train(was_training)
    difference = (model(pixels).last_hidden_state - expected).abs().max().item()
    if difference > atol:
        raise ValueError(f"Converted Dinov2 model differs from the source by {difference:.3g} (> {atol}).")
    logger.info("Converted Dinov2Model (%d layers, patch %d): max output difference %.2g. It has no DINO/iBOT heads; "
                "continued pretraining initialises them.", config.num_hidden_layers, config.patch_size, difference)
    return model


__all__ = ["chexfound_config_from_dinov2", "convert_dinov2_model", "convert_dinov2_state_dict"]

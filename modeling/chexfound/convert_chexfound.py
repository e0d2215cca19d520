"""Convert official CheXFound / DINOv2 checkpoints into `CheXFoundModel` state dicts (pure functions).

Accepted layouts (facts from RPIDIAL/CheXFound `train/train.py` and `utils/utils.py`):
- `teacher_checkpoint.pth` = `{"teacher": {"backbone.*", "dino_head.*", "ibot_head.*"}}` (the released file);
- `{"student": {...}}`, the same for the student network;
- `model_checkpoint.pth` = `{"model": SSLMetaArch state dict}` with `teacher.*` / `student.*` keys and the loss
  buffers `dino_loss.center`, `ibot_patch_loss.center`;
- a bare state dict, with or without the `backbone.` prefix.
`module` path components (DDP wrappers) are dropped; chunked names `blocks.<chunk>.<i>.` (FSDP
`block_chunks`) become `blocks.<i>.`. Official loaders use `strict=False` and silently give a random model on a
mismatch; here every missing or unexpected backbone key is a `ValueError` that lists the keys.

Official -> CheXFoundModel key map (all under `vit.`): `register_tokens` -> `reg_token`; `mlp.w12` -> `mlp.fc1`
and `mlp.w3` -> `mlp.fc2` (timm `SwiGLUPacked` uses the same packed row order); every other name is unchanged.
"""

import math
import re

import torch

from .configuration_chexfound import CheXFoundConfig
from .modeling_chexfound import CheXFoundModel, swiglu_hidden_features

# Non-backbone entries of the SSL meta-architecture that continued pretraining needs.
HEAD_PREFIXES = ("dino_head.", "ibot_head.")
LOSS_BUFFER_PREFIXES = ("dino_loss.", "ibot_patch_loss.")

_TOKEN_RENAMES = {
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "register_tokens": "reg_token",
    "mask_token": "mask_token",
    "patch_embed.proj.weight": "patch_embed.proj.weight",
    "patch_embed.proj.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\D.*)$")
_BLOCK_PARAM_RENAMES = {"mlp.w12.": "mlp.fc1.", "mlp.w3.": "mlp.fc2."}
# The official model has no other heads; DINOv2 leftovers ViT-S/B/L/g use 64-dim attention heads.
DEFAULT_HEAD_DIM = 64


def _drop_module_components(key: str) -> str:
    """Remove DDP `module` path components (only whole components, unlike the official `str.replace`)."""
    return ".".join(part for part in key.split(".") if part != "module")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_checkpoint(checkpoint: dict, branch: str = "teacher") -> dict[str, torch.Tensor]:
    """Flat state dict of one network (`branch` = "teacher" or "student") from any accepted layout.

    Keys keep their `backbone.` / `dino_head.` / `ibot_head.` prefixes; for `{"model": ...}` the loss buffers
    (`dino_loss.center`, ...) are added unchanged.
    """
    if branch not in ("teacher", "student"):
        raise ValueError(f"branch must be 'teacher' or 'student', got {branch!r}.")
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Expected a checkpoint dict, got {type(checkpoint).__name__}.")
    if isinstance(checkpoint.get(branch), dict):
        state_dict = checkpoint[branch]
    elif isinstance(checkpoint.get("model"), dict):
        model_state = {_drop_module_components(k): v for k, v in checkpoint["model"].items()}
        prefix = f"{branch}."
        state_dict = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
        if not state_dict:
            raise ValueError(
                f"Checkpoint['model'] has no '{prefix}*' keys; top-level names found: "
                f"{sorted({k.split('.')[0] for k in model_state})}."
            )
        state_dict.update({k: v for k, v in model_state.items() if k.startswith(LOSS_BUFFER_PREFIXES)})
    elif _is_state_dict(checkpoint):
        state_dict = checkpoint
    else:
        raise ValueError(
            f"Unrecognised checkpoint layout: top-level keys {sorted(checkpoint)[:20]}; expected "
            f"'{branch}', 'model' (SSLMetaArch) or a bare state dict of tensors."
        )
    if not state_dict:
        raise ValueError(f"The checkpoint's state dict for branch {branch!r} is empty.")
    non_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if non_tensors:
        raise ValueError(f"State dict entries that are not tensors: {non_tensors[:20]}.")
    return {_drop_module_components(k): v for k, v in state_dict.items()}


def split_backbone_and_heads(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`(backbone, rest)`: `backbone.*` keys with the prefix removed, everything else unchanged.

    A state dict without any `backbone.` key is a bare ViT state dict: all of it is backbone.
    """
    if not any(k.startswith("backbone.") for k in state_dict):
        return dict(state_dict), {}
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in state_dict.items() if not k.startswith("backbone.")}
    return backbone, rest


def rename_official_backbone_keys(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ViT names -> `CheXFoundModel` names (un-chunked, `vit.` prefix).

    Raises:
        ValueError: listing keys that are not part of the official ViT, or block indices seen twice.
    """
    renamed, unknown = {}, []
    for key, tensor in official.items():
        if key in _TOKEN_RENAMES:
            renamed[f"vit.{_TOKEN_RENAMES[key]}"] = tensor
            continue
        match = _CHUNKED_BLOCK_KEY.match(key) or _BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, param = match.groups()[-2:]
        for old, new in _BLOCK_PARAM_RENAMES.items():
            if param.startswith(old):
                param = new + param[len(old):]
        new_key = f"vit.blocks.{int(index)}.{param}"
        if new_key in renamed:
            raise ValueError(f"Backbone key {key!r} maps to {new_key!r}, which another key already produced.")
        renamed[new_key] = tensor
    if unknown:
        raise ValueError(f"Unexpected backbone keys (not part of the CheXFound/DINOv2 ViT): {sorted(unknown)}.")
    return renamed


def _infer_mlp_ratio(hidden_size: int, swiglu_width: int) -> float:
    """An mlp_ratio whose DINOv2 SwiGLU width is `swiglu_width` (4.0 for every official model)."""
    for ratio in (4.0, swiglu_width * 3 / (2 * hidden_size), (swiglu_width - 7) * 3 / (2 * hidden_size)):
        if swiglu_hidden_features(hidden_size, ratio) == swiglu_width:
            return ratio
    raise ValueError(f"No mlp_ratio gives SwiGLU width {swiglu_width} for hidden_size {hidden_size}.")


def infer_chexfound_config(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None, **overrides
) -> CheXFoundConfig:
    """`CheXFoundConfig` read from the tensor shapes of a converted (`vit.*`) state dict.

    Shapes fix every field except the head count (`qkv` is `(3D, D)` for any split); without
    `num_attention_heads` it assumes 64-dim heads, as in all DINOv2/CheXFound models. `overrides` set
    fields that shapes cannot show (e.g. `layer_norm_eps`, `drop_path_rate`).
    """
    required = ["vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight", "vit.blocks.0.attn.qkv.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"Cannot infer the config: missing backbone keys {missing}.")
    hidden_size = state_dict["vit.cls_token"].shape[-1]
    _, num_channels, patch_h, patch_w = state_dict["vit.patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise ValueError(f"Non-square patch {patch_h}x{patch_w} in patch_embed.proj.weight.")
    num_patches = state_dict["vit.pos_embed"].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"pos_embed covers {num_patches} patches (+ CLS), not a square grid.")
    block_indices = {int(k.split(".")[2]) for k in state_dict if k.startswith("vit.blocks.")}
    num_layers = max(block_indices) + 1
    if block_indices != set(range(num_layers)):
        absent = sorted(set(range(num_layers)) - block_indices)
        raise ValueError(f"Block indices are not contiguous from 0: blocks {absent} have no tensors.")
    mlp_keys = ["vit.blocks.0.mlp.fc1.weight", "vit.blocks.0.mlp.fc2.weight"]
    missing = [k for k in mlp_keys if k not in state_dict]
    if missing:
        raise ValueError(f"Cannot infer the FFN: missing backbone keys {missing} (official mlp.w12/w3 or mlp.fc1/fc2).")
    fc1_out = state_dict[mlp_keys[0]].shape[0]
    fc2_in = state_dict[mlp_keys[1]].shape[1]
    # Packed SwiGLU: fc1 (official w12) has twice as many rows as fc2 (w3) has columns; a plain MLP has equal widths.
    is_swiglu = fc1_out == 2 * fc2_in
    mlp_ratio = _infer_mlp_ratio(hidden_size, fc2_in) if is_swiglu else fc1_out / hidden_size
    fields = dict(
        image_size=grid * patch_h,
        patch_size=patch_h,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads or max(hidden_size // DEFAULT_HEAD_DIM, 1),
        mlp_ratio=mlp_ratio,
        use_swiglu_ffn=is_swiglu,
        num_register_tokens=state_dict["vit.reg_token"].shape[1] if "vit.reg_token" in state_dict else 0,
        layerscale_value=1e-5 if "vit.blocks.0.ls1.gamma" in state_dict else None,
        qkv_bias="vit.blocks.0.attn.qkv.bias" in state_dict,
    )
    return CheXFoundConfig(**{**fields, **overrides})


def check_state_dict_matches(state_dict: dict[str, torch.Tensor], config: CheXFoundConfig) -> None:
    """Raise `ValueError` listing missing, unexpected and wrongly shaped keys against `CheXFoundModel(config)`."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CheXFoundModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            "Checkpoint backbone does not match CheXFoundModel"
            f" (hidden_size={config.hidden_size}, layers={config.num_hidden_layers},"
            f" registers={config.num_register_tokens}, swiglu={config.use_swiglu_ffn}):"
            f"\n  missing keys: {missing}\n  unexpected keys: {unexpected}\n  shape mismatches: {wrong_shape}"
        )


def convert_chexfound_checkpoint(
    checkpoint: dict,
    config: CheXFoundConfig | None = None,
    branch: str = "teacher",
    num_attention_heads: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official checkpoint (any accepted layout) -> `(CheXFoundModel state dict, SSL heads state dict)`.

    Args:
        checkpoint: object from `torch.load(path, weights_only=True)`.
        config: check the backbone against this config; by default the config inferred from shapes
            (`infer_chexfound_config`).
        branch: network to take from teacher/student checkpoints ("teacher" is the released one).
        num_attention_heads: head count for the inferred config (shapes cannot show it).

    Returns:
        backbone: `vit.*` tensors that `CheXFoundModel(config).load_state_dict(..., strict=True)` accepts.
        heads: `dino_head.*`, `ibot_head.*` (and, for `{"model": ...}`, loss centers) with official names.

    Raises:
        ValueError: on an unrecognised layout or any missing / unexpected / mis-shaped backbone key.
    """
    official = unwrap_checkpoint(checkpoint, branch)
    backbone_official, rest = split_backbone_and_heads(official)
    unknown_rest = sorted(k for k in rest if not k.startswith(HEAD_PREFIXES + LOSS_BUFFER_PREFIXES))
    if unknown_rest:
        raise ValueError(f"Unexpected non-backbone keys (neither DINO/iBOT head nor loss buffer): {unknown_rest}.")
    backbone = rename_official_backbone_keys(backbone_official)
    if config is None:
        config = infer_chexfound_config(backbone, num_attention_heads=num_attention_heads)
    check_state_dict_matches(backbone, config)
    return backbone, rest


__all__ = [
    "check_state_dict_matches",
    "convert_chexfound_checkpoint",
    "infer_chexfound_config",
    "rename_official_backbone_keys",
    "split_backbone_and_heads",
    "unwrap_checkpoint",
]

"""Official MGCA Lightning checkpoints (`vit_base.ckpt`, `resnet_50.ckpt`, PyTorch Lightning 1.5 layout) -> MGCAModel.

The checkpoint is a dict with `state_dict` and `hyper_parameters` (a plain dict of str/int/float/bool/None, so
`torch.load(weights_only=True)` reads it without an allow-list). Key map, one prefix each:

    img_encoder_q.model.*             -> vision_model.*              (timm ViT-B/16 / ResNet-50 names already)
    img_encoder_q.global_embed.*      -> vision_global_projection.*
    img_encoder_q.local_embed.*       -> vision_local_projection.*
    text_encoder_q.model.*            -> text_model.*                (BLIP's BERT uses transformers' names)
    text_encoder_q.global_embed.*     -> text_global_projection.*
    text_encoder_q.local_embed.*      -> text_local_projection.*
    word_local_atten_layer.*, patch_local_atten_layer.*, prototype_layer.weight  (unchanged)

Dropped on purpose, and only these: BERT's `embeddings.position_ids` buffer and the `crossattention` weights of
each text layer (created by BLIP's `add_cross_attention=true`, never run in text mode). BLIP's BERT has no
token-type embeddings, so transformers' are set to zero (the `official` presets freeze them). Every other key
must map onto the model and every model key must be filled: anything else is a ValueError listing the keys.
"""

import re

import torch

from .configuration_mgca import MGCAConfig
from .modeling_mgca import MGCAModel

PREFIXES = (
    ("img_encoder_q.model.", "vision_model."),
    ("img_encoder_q.global_embed.", "vision_global_projection."),
    ("img_encoder_q.local_embed.", "vision_local_projection."),
    ("text_encoder_q.model.", "text_model."),
    ("text_encoder_q.global_embed.", "text_global_projection."),
    ("text_encoder_q.local_embed.", "text_local_projection."),
    ("word_local_atten_layer.", "word_local_atten_layer."),
    ("patch_local_atten_layer.", "patch_local_atten_layer."),
    ("prototype_layer.", "prototype_layer."),
)
DROPPED = (
    re.compile(r"^text_encoder_q\.model\.embeddings\.position_ids$"),
    re.compile(r"^text_encoder_q\.model\.encoder\.layer\.\d+\.crossattention\."),
)
TOKEN_TYPE_KEY = "text_model.embeddings.token_type_embeddings.weight"
# hyper_parameters name -> MGCAConfig field (official argparse names, mgca_module.py)
HPARAM_FIELDS = {
    "emb_dim": "projection_dim",
    "softmax_temperature": "ita_temperature",
    "local_temperature": "cta_temperature",
    "proto_temperature": "cpa_temperature",
    "num_prototypes": "num_prototypes",
    "epsilon": "sinkhorn_epsilon",
    "sinkhorn_iterations": "sinkhorn_iterations",
    "lambda_1": "lambda_ita",
    "lambda_2": "lambda_cta",
    "lambda_3": "lambda_cpa",
    "freeze_prototypes_epochs": "freeze_prototypes_epochs",
}


def rename_official_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official Lightning keys -> MGCAModel keys (module docstring). Returns (renamed, unmapped official keys)."""
    renamed, unmapped = {}, []
    for key, value in state_dict.items():
        if any(pattern.search(key) for pattern in DROPPED):
            continue
        for old, new in PREFIXES:
            if key.startswith(old):
                renamed[new + key[len(old) :]] = value
                break
        else:
            unmapped.append(key)
    return renamed, unmapped


def config_from_checkpoint(checkpoint: dict, preset: str | None = None) -> MGCAConfig:
    """MGCAConfig of an official checkpoint: the `official` preset for a ViT (`img_encoder` "vit_*"),
    `official-resnet50` for "resnet_50" (or `preset`), with the loss settings of `hyper_parameters` and the text
    encoder's layer count read from the state dict."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if preset is None:
        encoder = str(hparams.get("img_encoder", "vit_base"))
        if encoder.startswith("vit"):
            preset = "official"
        elif encoder == "resnet_50":
            preset = "official-resnet50"
        else:
            raise ValueError(f"hyper_parameters.img_encoder = {encoder!r} has no MGCA preset; pass --preset.")
    overrides = {field: hparams[name] for name, field in HPARAM_FIELDS.items() if name in hparams}
    if "use_local_atten" in hparams:
        overrides["cross_attention"] = "learned" if hparams["use_local_atten"] else "parameter_free"
    layers = {
        int(match.group(1))
        for key in checkpoint["state_dict"]
        if (match := re.match(r"text_encoder_q\.model\.encoder\.layer\.(\d+)\.", key))
    }
    config = MGCAConfig.from_preset(preset, **overrides)
    if layers:
        config.text_config.num_hidden_layers = max(layers) + 1
    return config


def convert_mgca_checkpoint(checkpoint: dict, preset: str | None = None) -> tuple[MGCAConfig, dict[str, torch.Tensor]]:
    """(config, MGCAModel state dict) from a loaded official checkpoint. Unknown official keys, missing model keys
    and shape mismatches raise ValueError naming them."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"not an MGCA Lightning checkpoint: no 'state_dict' (found {found}).")
    config = config_from_checkpoint(checkpoint, preset)
    state_dict, unmapped = rename_official_keys(checkpoint["state_dict"])
    model_state = MGCAModel(config).state_dict()
    if TOKEN_TYPE_KEY not in state_dict:
        state_dict[TOKEN_TYPE_KEY] = torch.zeros_like(model_state[TOKEN_TYPE_KEY])
    unexpected = sorted(set(state_dict) - set(model_state))
    missing = sorted(set(model_state) - set(state_dict))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in set(state_dict) & set(model_state)
        if state_dict[k].shape != model_state[k].shape
    )
    if unmapped or unexpected or missing or mismatched:
        raise ValueError(
            "MGCA checkpoint does not match the model: "
            f"unmapped official keys {unmapped[:10]}, unexpected {unexpected[:10]}, missing {missing[:10]}, "
            f"shape mismatches {mismatched[:10]} (counts {len(unmapped)}/{len(unexpected)}/{len(missing)}/"
            f"{len(mismatched)}); pick the matching --preset."
        )
    return config, {k: v.to(model_state[k].dtype) for k, v in state_dict.items()}


__all__ = ["config_from_checkpoint", "convert_mgca_checkpoint", "rename_official_keys"]

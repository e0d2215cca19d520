"""Convert official CheXFound GLoRI / linear-probe head checkpoints (e.g. the released `glori.pth`) into
`GLoRIForMultiLabel` state dicts (pure functions), as `convert_chexfound.py` does for the backbone.

Official layout (RPIDIAL/CheXFound `eval/classification/glori.py`): an fvcore checkpoint `{"model": state_dict}`,
keys optionally prefixed by DDP's `module.` and the grid wrapper `classifiers_dict.<name>.`, with a GLoRI head
(`decoder.*`, an ML-Decoder-style single-layer query decoder) or a linear probe (`linear.*`). Every key must be
understood: unknown keys raise `ValueError`. `cxrfm convert glori` uses these functions.
"""

import re

import torch

from .configuration_chexfound import CheXFoundConfig

# Official key (optionally "module." + "classifiers_dict.<name>.") -> head part and the rest of the key.
_OFFICIAL_HEAD_KEY = re.compile(r"^(?:module\.)?(?:classifiers_dict\.(?P<name>.+?)\.)?(?P<part>decoder|linear)\.(?P<rest>.+)$")
_DECODER_RENAMES = {
    "embed_standart.weight": "head.patch_projection.weight",
    "embed_standart.bias": "head.patch_projection.bias",
    "query_embed.weight": "head.query_embed",
    "duplicate_pooling": "head.group_fc_weight",
    "duplicate_pooling_bias": "head.group_fc_bias",
}


def convert_glori_checkpoint(
    state_dict: dict[str, torch.Tensor], classifier_name: str | None = None
) -> dict[str, torch.Tensor]:
    """Rename an official CheXFound head checkpoint (e.g. the released `glori.pth`) to `GLoRIForMultiLabel` keys.

    Accepts the fvcore file layout `{"model": state_dict, ...}`, keys with or without the DDP `module.` prefix and
    the `classifiers_dict.<name>.` wrapper, GLoRI (`decoder.*`) or linear-probe (`linear.*`) heads. A checkpoint of
    several grid heads needs `classifier_name`. Every key must be understood: unknown keys raise.

    Returns:
        head-only state dict (`head.*` keys); load it with `model.load_state_dict(sd, strict=False)` after checking
        that only backbone keys are missing, or merge it with a backbone state dict.
    """
    if isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]
    grouped: dict[str | None, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _OFFICIAL_HEAD_KEY.match(key)
        if match is None:
            raise ValueError(f"convert_glori_checkpoint: unrecognised key {key!r} (expected decoder.* or linear.*).")
        grouped.setdefault(match["name"], {})[f"{match['part']}.{match['rest']}"] = value
    if classifier_name is None:
        if len(grouped) > 1:
            raise ValueError(
                f"convert_glori_checkpoint: the checkpoint holds {len(grouped)} heads; pick one with classifier_name, "
                f"one of {sorted(grouped)}."
            )
        classifier_name = next(iter(grouped))
    if classifier_name not in grouped:
        raise ValueError(f"convert_glori_checkpoint: no head named {classifier_name!r}; found {sorted(grouped)}.")

    converted = {}
    for key, value in grouped[classifier_name].items():
        part, rest = key.split(".", 1)
        if part == "linear":
            converted[f"head.{rest}"] = value
        elif rest in _DECODER_RENAMES:
            converted[_DECODER_RENAMES[rest]] = value
        elif rest.startswith("layers.0."):
            converted["head.decoder_layer." + rest.removeprefix("layers.0.")] = value
        else:
            raise ValueError(
                f"convert_glori_checkpoint: unsupported official key {key!r} (only one decoder layer is supported)."
            )
    if "head.group_fc_weight" in converted:
        weight = converted["head.group_fc_weight"]
        if weight.ndim != 3 or weight.shape[-1] != 1:
            raise ValueError(
                f"convert_glori_checkpoint: duplicate_pooling must be (num_classes, dim, 1), got {tuple(weight.shape)}."
            )
        converted["head.group_fc_weight"] = weight[..., 0]
    return converted


def infer_head_config(
    converted_state_dict: dict[str, torch.Tensor], backbone_config: CheXFoundConfig, n_last_blocks: int = 4
) -> dict:
    """GLoRIConfig keyword arguments read off a converted head state dict (shapes) and the backbone's width.

    `num_heads` cannot be read from weights and keeps its default (8, the official value). For the linear probe the
    input width is `n_last_blocks * D` (+ D with `linear_avgpool`), so `n_last_blocks` must be given.
    """
    hidden = backbone_config.hidden_size
    if "head.weight" in converted_state_dict:
        num_labels, in_features = converted_state_dict["head.weight"].shape
        if in_features not in (n_last_blocks * hidden, (n_last_blocks + 1) * hidden):
            raise ValueError(
                f"infer_head_config: linear probe input width {in_features} does not match n_last_blocks={n_last_blocks}"
                f" x hidden_size={hidden} (with or without avgpool)."
            )
        return dict(
            head="linear",
            n_last_blocks=n_last_blocks,
            linear_avgpool=in_features == (n_last_blocks + 1) * hidden,
            num_labels=num_labels,
        )
    decoder_dim, feature_dim = converted_state_dict["head.patch_projection.weight"].shape
    if feature_dim % hidden:
        raise ValueError(
            f"infer_head_config: GLoRI input width {feature_dim} is not a multiple of the backbone hidden_size {hidden}."
        )
    num_labels, token_dim = converted_state_dict["head.group_fc_weight"].shape
    return dict(
        head="glori",
        n_last_blocks=feature_dim // hidden,
        decoder_dim=decoder_dim,
        ffn_dim=converted_state_dict["head.decoder_layer.linear1.weight"].shape[0],
        cat_cls=token_dim == decoder_dim + feature_dim,
        num_labels=num_labels,
    )


__all__ = ["convert_glori_checkpoint", "infer_head_config"]

"""Relaxed-CLIP dual encoder (paper 002): transformers image and text towers, linear projections into a shared
space and a learnable temperature, trained with CLIP/SLIP/UniCLIP losses whose positive pairs use the relaxed
similarity of Eq. 3.

`RelaxedCLIPModel` keeps the parameter names of transformers' `CLIPModel` (`vision_model`, `text_model`,
`visual_projection`, `text_projection`, `logit_scale`), so `from_clip` copies a CLIP checkpoint strictly, and its
`forward` returns `logits_per_image` so the `zero-shot-image-classification` pipeline runs on it.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForZeroShotImageClassification, CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_relaxed_clip import RelaxedCLIPConfig
from .losses_relaxed_clip import clip_loss

# Imported so that `save_pretrained` copies the pipeline beside the weights (custom_object_save follows relative
# imports); `RelaxedCLIPConfig.hub_pipelines` names it in config.json.
from .pipeline_cxr_zero_shot_classification import CXRZeroShotClassificationPipeline  # noqa: F401


@dataclass
class RelaxedCLIPOutput(ModelOutput):
    r"""Output of [`RelaxedCLIPModel`].

    Args:
        loss (`torch.Tensor`, 0-d, returned when `return_loss=True`):
            CLIP loss of Eq. 5 (with relaxed positives, Eq. 3, when `config.relax_positives`).
        logits_per_image (`torch.Tensor` of shape `(image_batch_size, text_batch_size)`):
            Cosine similarities times exp(logit_scale), image rows (what zero-shot pipelines read).
        logits_per_text (`torch.Tensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose.
        text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
            L2-normalised projected text embeddings.
        image_embeds (`torch.Tensor` of shape `(image_batch_size, projection_dim)`):
            L2-normalised projected image embeddings.
        text_model_output, vision_model_output:
            The towers' outputs; their `pooler_output` is the projected, not normalised, embedding.
        temperature (`torch.Tensor`, 0-d):
            tau = exp(-logit_scale) as the logits used it. Training code reads it here rather than from the
            parameter, because a sharding engine (DeepSpeed ZeRO-3) gathers the parameter only inside `forward`.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    temperature: torch.Tensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def pool_tower_output(
    outputs: ModelOutput, pooling: str, attention_mask: torch.Tensor | None = None, skip_first_token: bool = False
) -> torch.Tensor:
    """One vector per input from a tower's output: its `pooler_output` ("pooler"), the first token of
    `last_hidden_state` ("cls"), or the mean of the tokens ("mean"; over `attention_mask` where given, and
    after the first token when `skip_first_token`, i.e. the patch tokens of a ViT). (B, T, H) -> (B, H)."""
    if pooling == "pooler":
        if getattr(outputs, "pooler_output", None) is None:
            raise ValueError(
                f"pooling='pooler' needs a tower with a pooler_output, but {type(outputs).__name__} has none; "
                "set vision_pooling/text_pooling to 'cls' or 'mean' in RelaxedCLIPConfig."
            )
        return outputs.pooler_output
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if skip_first_token:
        hidden = hidden[:, 1:]
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask[:, -hidden.shape[1] :].to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# Attention query/value projection names in transformers 5.x towers (CLIP/ViT and BERT families).
LORA_ATTENTION_PROJECTIONS = ("q_proj", "v_proj", "query", "value")


class RelaxedCLIPPreTrainedModel(PreTrainedModel):
    config_class = RelaxedCLIPConfig
    base_model_prefix = "relaxed_clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        # The towers are PreTrainedModels and initialise themselves (transformers dispatches their own
        # `_init_weights`); only the parameters this model adds are set here.
        if isinstance(module, RelaxedCLIPModel):
            # CLIP's projection init (std = width^-0.5) and its temperature init.
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5)
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5)
            for projection in (module.visual_projection, module.text_projection):
                if projection.bias is not None:
                    init.zeros_(projection.bias)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class RelaxedCLIPModel(RelaxedCLIPPreTrainedModel):
    """Dual encoder: `vision_model` and `text_model` are built with `AutoModel.from_config` from the two
    sub-configs, followed by `visual_projection` / `text_projection` and the learnable `logit_scale` = log(1/tau)."""

    def __init__(self, config: RelaxedCLIPConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.text_model = AutoModel.from_config(config.text_config)
        # The towers share the composite config's sub-configs, so changes to one are seen by the other.
        config.vision_config._attn_implementation = self.vision_model.config._attn_implementation
        config.text_config._attn_implementation = self.text_model.config._attn_implementation
        self.vision_model.config = config.vision_config
        self.text_model.config = config.text_config
        # A tower's own pooler (BERT/ViT tanh-dense) is unused unless pooling="pooler": freeze it, since DDP refuses
        # trainable parameters that get no gradient.
        for tower, pooling in ((self.vision_model, config.vision_pooling), (self.text_model, config.text_pooling)):
            if pooling != "pooler" and isinstance(getattr(tower, "pooler", None), nn.Module):
                tower.pooler.requires_grad_(False)

        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=config.projection_bias)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=config.projection_bias)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    @classmethod
    def from_clip(cls, clip_model_or_path: CLIPModel | str, **config_overrides) -> "RelaxedCLIPModel":
        """Build a RelaxedCLIPModel holding the weights of a transformers `CLIPModel` (an instance, a Hub id or a
        folder), e.g. OpenAI's CLIP as in the paper. Weights are copied strictly, so both give the same embeddings.
        `config_overrides` set RelaxedCLIPConfig fields (e.g. `relax_threshold`)."""
        clip = clip_model_or_path
        if not isinstance(clip, CLIPModel):
            clip = CLIPModel.from_pretrained(clip_model_or_path)
        clip_config = clip.config
        config = RelaxedCLIPConfig(
            vision_config=clip_config.vision_config.to_dict(),
            text_config=clip_config.text_config.to_dict(),
            projection_dim=clip_config.projection_dim,
            logit_scale_init_value=clip_config.logit_scale_init_value,
            projection_bias=False,
            vision_pooling="pooler",
            text_pooling="pooler",
            **config_overrides,
        )
        model = cls(config)
        model.load_state_dict(clip.state_dict(), strict=True)
        return model

    @classmethod
    def from_towers(
        cls, vision_model: PreTrainedModel, text_model: PreTrainedModel, **config_kwargs
    ) -> "RelaxedCLIPModel":
        """Build a RelaxedCLIPModel around two pre-trained transformers towers (e.g. a `CLIPVisionModel` and a
        BERT-family `BertModel`, the paper's set-up). Tower weights are copied strictly; the projections and the
        temperature are newly initialised. `config_kwargs` set the other RelaxedCLIPConfig fields (e.g.
        `text_pooling="mean"` for sentence-transformers models)."""
        config = RelaxedCLIPConfig(
            vision_config=vision_model.config.to_dict(), text_config=text_model.config.to_dict(), **config_kwargs
        )
        model = cls(config)
        model.vision_model.load_state_dict(vision_model.state_dict(), strict=True)
        model.text_model.load_state_dict(text_model.state_dict(), strict=True)
        return model

    def lora_target_modules(self) -> list[str]:
        """Names of the attention query and value projections of both towers, for `peft.LoraConfig(target_modules=
        ...)`: `q_proj`/`v_proj` in transformers 5.x CLIP/ViT towers, `query`/`value` in BERT-family towers."""
        found = {name.rsplit(".", 1)[-1] for name, module in self.named_modules() if isinstance(module, nn.Linear)}
        return sorted(found & set(LORA_ATTENTION_PROJECTIONS))

    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Image tower output whose `pooler_output` is the projected (not normalised) embedding (B, projection_dim),
        as `CLIPModel.get_image_features` returns in transformers 5.x. `interpolate_pos_encoding` (CLIP/ViT towers)
        is passed on only when True."""
        if interpolate_pos_encoding:
            kwargs["interpolate_pos_encoding"] = True
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        pooled = pool_tower_output(vision_outputs, self.config.vision_pooling, skip_first_token=True)
        vision_outputs.pooler_output = self.visual_projection(pooled)
        return vision_outputs

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text tower output whose `pooler_output` is the projected (not normalised) embedding (B, projection_dim).
        `token_type_ids` is passed on only when given (BERT towers take it, CLIP's does not)."""
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        text_outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        pooled = pool_tower_output(text_outputs, self.config.text_pooling, attention_mask=attention_mask)
        text_outputs.pooler_output = self.text_projection(pooled)
        return text_outputs

    def temperature(self) -> torch.Tensor:
        """tau = exp(-logit_scale), with logit_scale clamped at `config.logit_scale_max` (ln 100, as CLIP)."""
        return torch.exp(-self.logit_scale.clamp(max=self.config.logit_scale_max))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> RelaxedCLIPOutput:
        """Embeds images (B_i, C, H, W) and texts (B_t, T), returns their scaled cosine logits and, with
        `return_loss=True` (needs B_i == B_t, row i paired with text i), the CLIP loss of Eq. 5 with relaxed positive
        pairs (Eq. 3) when `config.relax_positives`. This loss uses the local batch only; distributed training
        gathers embeddings and calls the loss functions itself (see `cxrfm.training.distributed`)."""
        if input_ids is None or pixel_values is None:
            raise ValueError("RelaxedCLIPModel.forward needs both input_ids and pixel_values.")
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        text_outputs = self.get_text_features(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            **kwargs,
        )
        image_embeds = nn.functional.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = nn.functional.normalize(text_outputs.pooler_output, dim=-1)
        temperature = self.temperature()
        logits_per_text = (text_embeds @ image_embeds.T) / temperature
        logits_per_image = logits_per_text.T

        loss = None
        if return_loss:
            if len(image_embeds) != len(text_embeds):
                raise ValueError(
                    f"return_loss=True needs one text per image, got {len(image_embeds)} images and "
                    f"{len(text_embeds)} texts."
                )
            loss = clip_loss(
                image_embeds,
                text_embeds,
                temperature,
                relax=self.config.relax_positives,
                threshold=self.config.relax_threshold,
                alpha=self.config.relax_alpha,
            )
        return RelaxedCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            temperature=temperature,
        )


# Hub route: save_pretrained copies this file and its siblings and writes auto_map.AutoModel (the config mirrors it
# to AutoModelForZeroShotImageClassification).
RelaxedCLIPModel.register_for_auto_class("AutoModel")
# Library route: only the installed package registers (a remote-code copy must not claim the config class).
if __name__.split(".")[0] == "cxrfm":
    AutoModel.register(RelaxedCLIPConfig, RelaxedCLIPModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(RelaxedCLIPConfig, RelaxedCLIPModel, exist_ok=True)

__all__ = ["RelaxedCLIPModel", "RelaxedCLIPPreTrainedModel", "RelaxedCLIPOutput", "pool_tower_output"]

"""MGCA (paper 004): a timm image encoder and a transformers BERT text encoder aligned at three granularities,
instance (ITA, Eq. 1-3), token (CTA, Eq. 4-6) and prototype (CPA, Eq. 7-9), summed as in Eq. 10.

Parameter names follow the official Lightning module with its wrappers removed (`img_encoder_q.model` ->
`vision_model`, `img_encoder_q.global_embed` -> `vision_global_projection`, ...), so `convert_mgca.py` is a
prefix rename. The token-wise losses run batched: word pieces are merged with scatter-adds over the fast
tokenizer's word ids and the token weights are clipped with one `nanquantile` (the official code loops over the
batch and over tokens).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForImageClassification, BertModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput

from ._distributed import gather_with_grad, rank_and_world_size
from .configuration_mgca import MGCAConfig
from .losses_mgca import (
    clip_token_weights,
    cpa_loss,
    cross_attention_parameter_free,
    ita_loss,
    sinkhorn_knopp,
    token_alignment_loss,
    total_loss,
)


@dataclass
class MGCAOutput(ModelOutput):
    r"""Output of [`MGCAModel`].

    Args:
        loss (`torch.Tensor`, 0-d, with `return_loss=True`): Eq. 10, lambda-weighted sum of the three terms.
        ita_loss, cta_loss, cpa_loss (`torch.Tensor`, 0-d, with `return_loss=True`): Eq. 3, Eq. 6, Eq. 9.
        image_embeds (`(B, d)`), text_embeds (`(B, d)`): L2-normalised global embeddings v~, t~.
        logits_per_image (`(B, B)`): v~ . t~ / tau_1.
        patch_embeds (`(B, S, d)`), word_embeds (`(B, W, d)`): L2-normalised token embeddings r~, z~
            (W = sequence length - 1 word slots).
        word_valid (`(B, W)` bool): slots holding a word.
        word_to_patch_attention (`(B, W, S)`): cross-attention of each word over the patches (Eq. 4), the
            correspondence maps of the paper's Fig. 3.
        patch_weights (`(B, S)`), word_weights (`(B, W)`): clipped, normalised token weights w of Eq. 5.
        image_scores, text_scores (`(B, K)`): cosine similarities to the prototypes.
    """

    loss: torch.Tensor | None = None
    ita_loss: torch.Tensor | None = None
    cta_loss: torch.Tensor | None = None
    cpa_loss: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    patch_embeds: torch.Tensor | None = None
    word_embeds: torch.Tensor | None = None
    word_valid: torch.Tensor | None = None
    word_to_patch_attention: torch.Tensor | None = None
    patch_weights: torch.Tensor | None = None
    word_weights: torch.Tensor | None = None
    image_scores: torch.Tensor | None = None
    text_scores: torch.Tensor | None = None


class MGCAProjectionHead(nn.Module):
    """g_v / g_t (Sec. 3.2): Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm(affine=False), the official
    `GlobalEmbedding` (indices 0, 1, 3, 4 of `head` match its keys). (B, D) -> (B, d)."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(in_features, hidden_size),
            nn.BatchNorm1d(hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, out_features),
            nn.BatchNorm1d(out_features, affine=False),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


class MGCALocalProjectionHead(nn.Module):
    """The same head applied to every token with 1x1 convolutions (official `LocalEmbedding`); BatchNorm pools
    its statistics over batch and tokens. (B, T, D) -> (B, T, d)."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv1d(in_features, hidden_size, kernel_size=1),
            nn.BatchNorm1d(hidden_size),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden_size, out_features, kernel_size=1),
            nn.BatchNorm1d(out_features, affine=False),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens.transpose(1, 2)).transpose(1, 2)


def vit_cls_attention(block: nn.Module, block_input: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Head-averaged attention of [CLS] over the patch tokens in a timm ViT `block`, recomputed from the block's
    input (B, N, D) with its own `norm1`, `qkv` and q/k norms (the fused attention kernel returns no weights).
    Returns (B, S) for the S = N - num_prefix_tokens patches."""
    attention = block.attn
    batch, length, width = block_input.shape
    qkv = attention.qkv(block.norm1(block_input))
    qkv = qkv.reshape(batch, length, 3, attention.num_heads, width // attention.num_heads).permute(2, 0, 3, 1, 4)
    query, key = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    probs = ((query[:, :, :1] * attention.scale) @ key.transpose(-2, -1)).softmax(dim=-1)  # (B, H, 1, N)
    return probs[:, :, 0, num_prefix_tokens:].mean(dim=1)


def word_slots(
    word_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    merge: str,
    keep_special: bool,
    drop_last_word_when_unpadded: bool,
) -> torch.Tensor:
    """Slot of every token once word pieces are merged: (B, L) long in [0, L], slot 0 = [CLS], slot L = discarded.

    word_ids (B, L): the fast tokenizer's word index per token, -1 for special tokens and padding. `merge="none"`
    gives every token its own slot. keep_special: [SEP] gets its own slot (official) instead of being discarded.
    drop_last_word_when_unpadded: official quirk, rows without padding discard their last position and last word.
    """
    batch, length = word_ids.shape
    present = attention_mask.bool()
    special = present & (word_ids < 0)
    special[:, 0] = present[:, 0]  # [CLS] always takes slot 0, dropped by the caller
    if drop_last_word_when_unpadded:
        present = present.clone()
        present[:, -1] = False  # the official zip stops one token early
    takes_slot = present & (~special | keep_special)
    takes_slot[:, 0] = present[:, 0]
    previous = torch.cat([torch.full_like(word_ids[:, :1], -2), word_ids[:, :-1]], dim=1)
    previous_special = torch.cat([torch.ones_like(special[:, :1]), special[:, :-1]], dim=1)
    starts = takes_slot & (special | previous_special | (word_ids != previous) | (merge == "none"))
    slots = torch.cumsum(starts.long(), dim=1) - 1
    slots = torch.where(takes_slot, slots, torch.full_like(slots, length))
    if drop_last_word_when_unpadded:
        unpadded = attention_mask[:, -1].bool()
        last_slot = slots[:, -2:-1]
        last_is_word = ~special[:, -2:-1]
        dropped = unpadded[:, None] & last_is_word & (slots == last_slot)
        slots = torch.where(dropped, torch.full_like(slots, length), slots)
    return slots


def merge_word_pieces(
    hidden: torch.Tensor, token_weights: torch.Tensor, slots: torch.Tensor, merge: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter tokens (B, L, D) and their weights (B, L) into word slots (see `word_slots`): embeddings summed
    (official) or averaged, weights summed. Returns word embeddings (B, L - 1, D) (zeros in empty slots, as the
    official zero padding), word weights (B, L - 1) and the mask of filled slots (B, L - 1); [CLS] is dropped."""
    batch, length, width = hidden.shape
    sums = hidden.new_zeros(batch, length + 1, width).scatter_add(1, slots[..., None].expand(-1, -1, width), hidden)
    counts = hidden.new_zeros(batch, length + 1).scatter_add(1, slots, torch.ones_like(token_weights))
    weights = token_weights.new_zeros(batch, length + 1).scatter_add(1, slots, token_weights)
    if merge == "mean":
        sums = sums / counts.clamp(min=1)[..., None]
    return sums[:, 1:length], weights[:, 1:length], counts[:, 1:length] > 0


class MGCAPreTrainedModel(PreTrainedModel):
    config_class = MGCAConfig
    base_model_prefix = "mgca"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")

    @torch.no_grad()
    def _init_weights(self, module):
        # timm and BERT initialise their own towers; only MGCA's additions are set here.
        if isinstance(module, MGCAModel):
            init.normal_(module.prototype_layer.weight, std=self.config.initializer_range)
            if not self.config.text_token_type_embeddings:
                init.zeros_(module.text_model.embeddings.token_type_embeddings.weight)
        elif isinstance(module, (MGCAProjectionHead, MGCALocalProjectionHead)):
            for layer in module.head:
                if isinstance(layer, (nn.Linear, nn.Conv1d)):
                    init.normal_(layer.weight, std=self.config.initializer_range)
                    init.zeros_(layer.bias)
                elif isinstance(layer, nn.BatchNorm1d):
                    if layer.affine:
                        init.ones_(layer.weight)
                        init.zeros_(layer.bias)
                    init.zeros_(layer.running_mean)
                    init.ones_(layer.running_var)
                    init.zeros_(layer.num_batches_tracked)
        elif isinstance(module, MGCAModel.CrossAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
            init.zeros_(module.out_proj.bias)


def build_vision_model(config: MGCAConfig, checkpoint_file: str | None = None) -> nn.Module:
    """The timm image encoder without a classifier (`num_classes=0`): randomly initialised, or from a local
    checkpoint file that timm reads for this architecture (`{"model": ...}` / `{"state_dict": ...}` / plain state
    dicts, .pth or .safetensors), through timm's own checkpoint filter, which drops the classifier and resamples
    ViT position embeddings to `config.image_size`."""
    kwargs = dict(config.vision_kwargs)
    if config.is_vit:
        kwargs["img_size"] = config.image_size  # one source of truth for the input side
    model = timm.create_model(config.vision_backbone, pretrained=False, num_classes=0, **kwargs)
    if checkpoint_file is None:
        return model
    if not Path(checkpoint_file).is_file():
        raise FileNotFoundError(f"vision checkpoint {checkpoint_file}: no such file.")
    # timm's pretrained loading only warns about missing or unexpected keys; a partial initialisation would go
    # unnoticed, so the key sets are compared first (shapes may differ: position embeddings are resampled).
    classifier = model.pretrained_cfg.get("classifier")
    checkpoint_keys = {key for key in timm.models.load_state_dict(str(checkpoint_file)) if key.split(".")[0] != classifier}
    model_keys = set(model.state_dict())
    missing, unexpected = sorted(model_keys - checkpoint_keys), sorted(checkpoint_keys - model_keys)
    if missing or unexpected:
        raise ValueError(
            f"vision checkpoint {checkpoint_file} does not fit {config.vision_backbone} with {config.vision_kwargs}: "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}."
        )
    return timm.create_model(
        config.vision_backbone, pretrained=True, pretrained_cfg_overlay={"file": str(checkpoint_file)}, num_classes=0,
        **kwargs,
    )


class MGCAModel(MGCAPreTrainedModel):
    """Image encoder (timm), text encoder (transformers BERT), global and local projection heads to d, the two
    CTA cross-attention layers and K prototypes."""

    class CrossAttention(nn.MultiheadAttention):
        """Eq. 4 with learnable Q, K, V (`in_proj_weight`) and output O (`out_proj`), one head, as the official
        `{word,patch}_local_atten_layer`."""

    def __init__(self, config: MGCAConfig):
        super().__init__(config)
        self.vision_model = build_vision_model(config)
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        # [CLS] attention weights of the last layer are read from `output_attentions`, which needs eager attention.
        self.text_model.config._attn_implementation = "eager"
        config.text_config._attn_implementation = "eager"
        if not config.text_token_type_embeddings:
            self.text_model.embeddings.token_type_embeddings.requires_grad_(False)
        if config.is_vit:
            vision_global = vision_local = self.vision_model.num_features
        else:
            vision_local = self.vision_model.feature_info[3]["num_chs"]  # layer 3
            vision_global = self.vision_model.num_features  # pooled layer 4
        text_width = config.text_config.hidden_size
        hidden, dim = config.projection_hidden_size, config.projection_dim
        self.vision_global_projection = MGCAProjectionHead(vision_global, hidden, dim)
        self.vision_local_projection = MGCALocalProjectionHead(vision_local, hidden, dim)
        self.text_global_projection = MGCAProjectionHead(text_width, hidden, dim)
        self.text_local_projection = MGCALocalProjectionHead(text_width, hidden, dim)
        self.word_local_atten_layer = self.CrossAttention(dim, num_heads=1, batch_first=True)
        self.patch_local_atten_layer = self.CrossAttention(dim, num_heads=1, batch_first=True)
        if config.cross_attention == "parameter_free":
            # kept so official checkpoints load strictly, frozen since DDP refuses parameters without gradient
            self.word_local_atten_layer.requires_grad_(False)
            self.patch_local_atten_layer.requires_grad_(False)
        self.prototype_layer = nn.Linear(dim, config.num_prototypes, bias=False)
        self.post_init()

    # ---- image tower -------------------------------------------------------------------------------------------
    def load_vision_checkpoint(self, checkpoint_file: str) -> None:
        """Initialise the image encoder from an ImageNet checkpoint before pre-training, as the official code does
        (DeiT-B weights for the ViT, ImageNet ResNet-50 for the CNN); see `build_vision_model` for what timm reads.
        A checkpoint of another architecture is an error naming the missing and unexpected keys."""
        self.vision_model.load_state_dict(build_vision_model(self.config, checkpoint_file).state_dict(), strict=True)

    def _resize_for_resnet(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.resnet_upsample_size
        if self.config.is_vit or size is None:
            return pixel_values
        return F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=True)

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image encoder features: global (B, D_g), local tokens (B, S, D_l) and raw token weights (B, S): the
        last block's [CLS] attention for a ViT (no gradient), uniform for a ResNet (layer-3 tokens)."""
        vision = self.vision_model
        if self.config.is_vit:
            last = len(vision.blocks) - 1
            final, intermediates = vision.forward_intermediates(
                pixel_values, indices=[last - 1] if last > 0 else [0], output_fmt="NLC", return_prefix_tokens=True
            )
            if last > 0:
                spatial, prefix = intermediates[0]
                block_input = torch.cat([prefix, spatial], dim=1)
            else:
                block_input = vision.norm_pre(vision.patch_drop(vision._pos_embed(vision.patch_embed(pixel_values))))
            with torch.no_grad():
                weights = vit_cls_attention(vision.blocks[last], block_input, vision.num_prefix_tokens)
            return final[:, 0], final[:, vision.num_prefix_tokens :], weights
        layer4, (layer3,) = vision.forward_intermediates(self._resize_for_resnet(pixel_values), indices=[3])
        local = layer3.flatten(2).transpose(1, 2)
        weights = local.new_ones(local.shape[:2])
        return layer4.mean(dim=(2, 3)), local, weights

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Image encoder output: `last_hidden_state` the local tokens (B, S, D) and `pooler_output` the L2-normalised
        projected embedding v~ (B, d)."""
        global_features, local_features, _ = self.encode_image(pixel_values)
        embeds = F.normalize(self.vision_global_projection(global_features), dim=-1)
        return BaseModelOutputWithPooling(last_hidden_state=local_features, pooler_output=embeds)

    def get_image_feature_maps(self, pixel_values: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """Multi-level (B, C, H, W) feature maps of the image encoder for dense transfer, from timm's
        `forward_intermediates` (ResNet: stem and layers 1-4 after the official upsampling; ViT: block outputs on
        the patch grid). `indices` as in timm (None = all levels)."""
        return self.vision_model.forward_intermediates(
            self._resize_for_resnet(pixel_values), indices=indices, intermediates_only=True
        )

    # ---- text tower --------------------------------------------------------------------------------------------
    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BERT's last layer: [CLS] state (B, H), token states (B, L, H) and the head-averaged [CLS] attention over
        all tokens (B, L) (no gradient)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = torch.zeros_like(input_ids) if self.config.text_zero_position_ids else None
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=True,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state
        cls_attention = outputs.attentions[-1][:, :, 0, :].mean(dim=1).detach()
        return hidden[:, 0], hidden, cls_attention

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Text encoder output: `last_hidden_state` (B, L, H) and `pooler_output` the L2-normalised projected report
        embedding t~ (B, d)."""
        cls_state, hidden, _ = self.encode_text(input_ids, attention_mask, token_type_ids)
        embeds = F.normalize(self.text_global_projection(cls_state), dim=-1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=embeds)

    def text_word_tokens(
        self,
        hidden: torch.Tensor,
        cls_attention: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Word embeddings (B, W, H), raw word weights (B, W) and filled-slot mask (B, W) from BERT's token states.
        Without `word_ids` every token between [CLS] and the last non-padding token ([SEP]) is its own word."""
        config = self.config
        if word_ids is None:
            positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
            last = attention_mask.sum(dim=1, keepdim=True) - 1
            special = (positions == 0) | (positions == last) | (attention_mask == 0)
            word_ids = torch.where(special, torch.full_like(positions, -1), positions)
        token_weights = cls_attention
        if config.word_weight_shift:
            # official quirk: attention over tokens 1..L-1 zipped with tokens 0..L-1, token p gets token p+1's value
            token_weights = torch.cat([cls_attention[:, 1:], cls_attention.new_zeros(len(cls_attention), 1)], dim=1)
        slots = word_slots(
            word_ids,
            attention_mask,
            config.word_piece_merge,
            keep_special=not config.mask_special_tokens,
            drop_last_word_when_unpadded=config.drop_last_word_when_unpadded,
        )
        return merge_word_pieces(hidden, token_weights, slots, config.word_piece_merge)

    # ---- forward -----------------------------------------------------------------------------------------------
    def prototype_scores(self, embeds: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B, K) of unit embeddings to the prototypes c_k (Eq. 7)."""
        if self.config.renormalize_prototypes:
            return self.prototype_layer(embeds)
        return embeds @ F.normalize(self.prototype_layer.weight, dim=1).T

    def global_losses(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, image_scores: torch.Tensor, text_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITA (Eq. 3) and CPA (Eq. 9) of this process's rows, distributed as the config says: ITA negatives gathered
        from every process with gradients (`gather_negatives`), Sinkhorn sums over every process
        (`distributed_sinkhorn`). Averaging these losses over processes (as DDP averages gradients) gives the
        full-batch losses."""
        config = self.config
        if config.gather_negatives:
            rank, _ = rank_and_world_size()
            ita = ita_loss(
                image_embeds, text_embeds, config.ita_temperature, gather_with_grad(image_embeds),
                gather_with_grad(text_embeds), rank, config.ita_reduction,
            )
        else:
            ita = ita_loss(image_embeds, text_embeds, config.ita_temperature, reduction=config.ita_reduction)
        image_codes = sinkhorn_knopp(
            image_scores, config.sinkhorn_epsilon, config.sinkhorn_iterations, config.distributed_sinkhorn
        )
        text_codes = sinkhorn_knopp(
            text_scores, config.sinkhorn_epsilon, config.sinkhorn_iterations, config.distributed_sinkhorn
        )
        return ita, cpa_loss(image_scores, text_scores, image_codes, text_codes, config.cpa_temperature)

    def _cross_attend(self, queries, keys, key_mask, layer):
        if self.config.cross_attention == "learned":
            output, alpha = layer(queries, keys, keys, key_padding_mask=None if key_mask is None else ~key_mask)
            return output, alpha
        return cross_attention_parameter_free(queries, keys, self.config.cta_temperature, key_mask)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = True,
        **kwargs: Any,
    ) -> MGCAOutput | BaseModelOutputWithPooling:
        """Embeds images (B, C, H, W) and their reports (B, L) and, with `return_loss=True`, returns the ITA, CTA
        and CPA losses and their Eq. 10 sum. `word_ids` (B, L): the fast tokenizer's word index per token (-1 for
        special tokens and padding, as `MGCAProcessor` returns) to merge word pieces. With only `pixel_values`,
        returns `get_image_features` (local tokens and the embedding v~ as `pooler_output`), what the
        image-feature-extraction pipeline reads."""
        config = self.config
        if pixel_values is None:
            raise ValueError("MGCAModel.forward needs pixel_values (B, C, H, W).")
        if config.renormalize_prototypes:
            # official: prototype rows re-normalised in place at the start of every forward
            with torch.no_grad():
                self.prototype_layer.weight.copy_(F.normalize(self.prototype_layer.weight, dim=1))
        if input_ids is None:
            return self.get_image_features(pixel_values)
        global_image, local_image, patch_weights = self.encode_image(pixel_values)
        image_embeds = F.normalize(self.vision_global_projection(global_image), dim=-1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if len(input_ids) != len(pixel_values):
            raise ValueError(f"MGCAModel needs one report per image, got {len(pixel_values)} images and {len(input_ids)} reports.")
        cls_state, hidden, cls_attention = self.encode_text(input_ids, attention_mask, token_type_ids)
        text_embeds = F.normalize(self.text_global_projection(cls_state), dim=-1)

        words, word_weights, word_valid = self.text_word_tokens(hidden, cls_attention, attention_mask, word_ids)
        patch_embeds = F.normalize(self.vision_local_projection(local_image), dim=-1)
        word_embeds = F.normalize(self.text_local_projection(words), dim=-1)
        # Eq. 4 both ways: words attend to patches (no mask), patches attend to the filled word slots
        word_attended, word_to_patch = self._cross_attend(word_embeds, patch_embeds, None, self.word_local_atten_layer)
        patch_attended, _ = self._cross_attend(patch_embeds, word_embeds, word_valid, self.patch_local_atten_layer)
        word_attended = F.normalize(word_attended, dim=-1)
        if config.normalize_image_to_word_output:
            patch_attended = F.normalize(patch_attended, dim=-1)
        word_weights = clip_token_weights(word_weights, word_valid, config.token_weight_quantiles)
        patch_weights = clip_token_weights(
            patch_weights, torch.ones_like(patch_weights, dtype=torch.bool), config.token_weight_quantiles
        )
        logits_per_image = image_embeds @ text_embeds.T / config.ita_temperature
        image_scores, text_scores = self.prototype_scores(image_embeds), self.prototype_scores(text_embeds)

        output = MGCAOutput(
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            logits_per_image=logits_per_image,
            patch_embeds=patch_embeds,
            word_embeds=word_embeds,
            word_valid=word_valid,
            word_to_patch_attention=word_to_patch,
            patch_weights=patch_weights,
            word_weights=word_weights,
            image_scores=image_scores,
            text_scores=text_scores,
        )
        if not return_loss:
            return output

        ita, cpa = self.global_losses(image_embeds, text_embeds, image_scores, text_scores)
        word_negatives = word_valid if config.mask_special_tokens else None
        lta = token_alignment_loss(
            word_embeds, word_attended, word_weights, config.cta_temperature, word_negatives, config.cta_token_average
        )
        lia = token_alignment_loss(
            patch_embeds, patch_attended, patch_weights, config.cta_temperature, None, config.cta_token_average
        )
        cta = (lia + lta) / 2 if config.cta_reduction == "mean" else lia + lta
        output.ita_loss, output.cta_loss, output.cpa_loss = ita, cta, cpa
        output.loss = total_loss(ita, cta, cpa, (config.lambda_ita, config.lambda_cta, config.lambda_cpa))
        return output


class MGCAForImageClassification(MGCAPreTrainedModel):
    """Linear evaluation (Sec. 4.2): the MGCA image encoder, frozen and in eval mode, and a linear head on its
    global feature ([CLS] after the final norm for a ViT, pooled layer 4 for a ResNet; not the projection), as the
    official `SSLFineTuner`. `config.num_labels` outputs; `config.problem_type` picks the loss
    ("multi_label_classification" = BCE, else cross-entropy)."""

    def __init__(self, config: MGCAConfig):
        super().__init__(config)
        self.mgca = MGCAModel(config)
        self.mgca.requires_grad_(False)
        self.classifier = nn.Linear(self.mgca.vision_model.num_features, config.num_labels)
        self.post_init()

    @classmethod
    def from_mgca(cls, model: MGCAModel, num_labels: int, problem_type: str | None = None) -> "MGCAForImageClassification":
        """Classifier around a trained `MGCAModel` (weights copied strictly), with a new linear head."""
        config = MGCAConfig.from_dict({**model.config.to_dict(), "num_labels": num_labels, "problem_type": problem_type})
        classifier = cls(config)
        classifier.mgca.load_state_dict(model.state_dict(), strict=True)
        return classifier

    def train(self, mode: bool = True):
        super().train(mode)
        self.mgca.eval()  # frozen encoder: BatchNorm/dropout stay in inference mode
        return self

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ImageClassifierOutput:
        with torch.no_grad():
            features, _, _ = self.mgca.encode_image(pixel_values)
        logits = self.classifier(features)
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


# Hub route: save_pretrained copies this module and writes auto_map entries.
MGCAModel.register_for_auto_class("AutoModel")
MGCAForImageClassification.register_for_auto_class("AutoModelForImageClassification")
# Library route: only the installed package claims the config class (a remote-code copy must not).
if __name__.split(".")[0] == "cxrfm":
    AutoModel.register(MGCAConfig, MGCAModel, exist_ok=True)
    AutoModelForImageClassification.register(MGCAConfig, MGCAForImageClassification, exist_ok=True)

__all__ = [
    "MGCAForImageClassification",
    "MGCALocalProjectionHead",
    "MGCAModel",
    "MGCAOutput",
    "MGCAPreTrainedModel",
    "MGCAProjectionHead",
    "merge_word_pieces",
    "vit_cls_attention",
    "word_slots",
]

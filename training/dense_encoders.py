"""Frozen cxrfm encoders as feature pyramids for dense transfer (segmentation, detection; MGCA paper §4 protocol).

`load_frozen_encoder(name_or_path)` turns a saved cxrfm folder (CheXFound, MGCA ViT or ResNet-50, relaxed-CLIP
image tower), a transformers Dinov2 folder, or a timm model name into a `FrozenEncoder`: no parameter requires a
gradient, and it stays in eval mode (BatchNorm statistics frozen too) whatever `train()` is called with. Its
output is what a feature cache stores. A small trainable adapter then turns it into the feature list of
segmentation-models-pytorch's encoder interface, `[x, stride 2, 4, 8, 16, 32]`:

- CNN (ResNet-50): the encoder *is* smp's `ResNetEncoder` holding our weights (the MGCA ResNet-50 uses timm's
  `resnet50`, whose keys are torchvision's), so its five stages pass straight through (`CNNAdapter`).
- ViT: the last `n_levels` blocks' patch tokens, reshaped to (B, D, H/p, W/p) maps, become a four-level pyramid
  at strides 4/8/16/32 (`ViTPyramidAdapter`): block i goes to level i, as SETR's multi-level aggregation (MLA)
  takes features from several depths, and each level is a 1x1 projection resampled to its stride, as ViTDet's
  simple feature pyramid builds all scales from a single-stride ViT. Stride 2 is an empty map (no ViT feature is
  that fine), which smp's U-Net decoder accepts as a skip with 0 channels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PYRAMID_STRIDES = (4, 8, 16, 32)


def _check_depth(num_blocks: int, n_levels: int, source: str) -> None:
    if num_blocks < n_levels:
        raise ValueError(f"{source}: a ViT pyramid takes the last {n_levels} blocks, the encoder has {num_blocks}.")


class FrozenEncoder(nn.Module):
    """A pretrained image encoder with every parameter frozen and permanently in eval mode.

    Attributes:
        kind: "vit" (features: `n_levels` maps (B, D, H/p, W/p), shallowest first) or "cnn" (features at strides
            2, 4, 8, 16, 32 with `channels`).
        channels: channels of each output feature map.
        image_mean, image_std: normalisation the encoder was trained with (3 values each).
    """

    def __init__(self, kind: str, channels: list[int], image_mean, image_std, source: str):
        super().__init__()
        self.kind, self.channels, self.source = kind, list(channels), source
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    def freeze(self) -> "FrozenEncoder":
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        # A frozen encoder keeps BatchNorm running statistics and dropout off even inside a model in train mode.
        return super().train(False)

    def features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.features(pixel_values)


def tokens_to_map(patch_tokens: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """(B, N, D) patch tokens in row-major order -> (B, D, H/p, W/p)."""
    rows, cols = height // patch_size, width // patch_size
    if rows * cols != patch_tokens.shape[1]:
        raise ValueError(f"{patch_tokens.shape[1]} patch tokens do not tile a {height}x{width} image at patch {patch_size}.")
    return patch_tokens.transpose(1, 2).reshape(patch_tokens.shape[0], patch_tokens.shape[2], rows, cols)


class CheXFoundEncoder(FrozenEncoder):
    """CheXFound's official feature recipe: the last `n_levels` blocks through the final norm, registers dropped."""

    def __init__(self, model, n_levels: int, image_mean, image_std, source: str):
        _check_depth(model.config.num_hidden_layers, n_levels, source)
        hidden = model.config.hidden_size
        super().__init__("vit", [hidden] * n_levels, image_mean, image_std, source)
        self.model, self.n_levels, self.patch_size = model, n_levels, model.config.patch_size
        self.freeze()

    def features(self, pixel_values):
        height, width = pixel_values.shape[-2:]
        layers = self.model.get_intermediate_layers(pixel_values, n=self.n_levels)
        return [tokens_to_map(tokens, height, width, self.patch_size) for tokens, _ in layers]


class HiddenStatesViTEncoder(FrozenEncoder):
    """A transformers ViT tower (relaxed-CLIP image tower, Dinov2Model, MGCA ViT): the last `n_levels` hidden
    states without their `num_prefix_tokens` leading tokens ([CLS] and registers)."""

    def __init__(self, model, patch_size: int, hidden_size: int, num_prefix_tokens: int, n_levels: int,
                 image_mean, image_std, source: str):
        _check_depth(model.config.num_hidden_layers, n_levels, source)
        super().__init__("vit", [hidden_size] * n_levels, image_mean, image_std, source)
        self.model, self.patch_size, self.n_levels = model, patch_size, n_levels
        self.num_prefix_tokens = num_prefix_tokens
        self.freeze()

    def features(self, pixel_values):
        height, width = pixel_values.shape[-2:]
        hidden_states = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        return [tokens_to_map(state[:, self.num_prefix_tokens :], height, width, self.patch_size)
                for state in hidden_states[-self.n_levels :]]


class CNNEncoder(FrozenEncoder):
    """A CNN returning five stages at strides 2..32: smp's ResNetEncoder (depth 5) or a timm `features_only` model."""

    def __init__(self, model, channels: list[int], image_mean, image_std, source: str, drops_input: bool):
        super().__init__("cnn", channels, image_mean, image_std, source)
        self.model, self.drops_input = model, drops_input
        self.freeze()

    def features(self, pixel_values):
        stages = self.model(pixel_values)
        # smp encoders return [x, s2, ..., s32]; timm features_only returns [s2, ..., s32].
        return list(stages[1:] if self.drops_input else stages)


class CNNAdapter(nn.Module):
    """CNN stages -> smp's feature list: the input image followed by the five stages (nothing to train)."""

    def __init__(self, channels: list[int], in_channels: int = 3):
        super().__init__()
        self.out_channels = [in_channels, *channels]
        self.strides = (1, 2, 4, 8, 16, 32)

    def forward(self, pixel_values: torch.Tensor, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [pixel_values, *features]


class ViTPyramidAdapter(nn.Module):
    """Single-stride ViT maps (shallowest first) -> pyramid at strides 4/8/16/32 (SETR-MLA levels, ViTDet-style
    resampling): level i = Conv1x1(BN, ReLU) of block i, bilinearly resampled to H/stride_i."""

    def __init__(self, in_channels: list[int], pyramid_channels: tuple[int, ...] = (64, 128, 256, 256), image_channels: int = 3):
        super().__init__()
        if len(in_channels) != len(PYRAMID_STRIDES):
            raise ValueError(f"ViTPyramidAdapter needs {len(PYRAMID_STRIDES)} ViT levels, got {len(in_channels)}.")
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))
            for dim, out in zip(in_channels, pyramid_channels)
        )
        self.out_channels = [image_channels, 0, *pyramid_channels]
        self.strides = (1, 2, *PYRAMID_STRIDES)

    def forward(self, pixel_values: torch.Tensor, features: list[torch.Tensor]) -> list[torch.Tensor]:
        height, width = pixel_values.shape[-2:]
        batch = pixel_values.shape[0]
        pyramid = [
            F.interpolate(level(feature), size=(height // stride, width // stride), mode="bilinear", align_corners=False)
            for level, feature, stride in zip(self.levels, features, PYRAMID_STRIDES)
        ]
        empty = pixel_values.new_zeros(batch, 0, height // 2, width // 2)
        return [pixel_values, empty, *pyramid]


def build_adapter(encoder: FrozenEncoder, pyramid_channels: tuple[int, ...] = (64, 128, 256, 256)) -> nn.Module:
    if encoder.kind == "cnn":
        return CNNAdapter(encoder.channels)
    return ViTPyramidAdapter(encoder.channels, pyramid_channels)


def resnet50_as_smp_encoder(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """smp's ResNet-50 encoder (depth 5) holding a torchvision/timm-named ResNet-50 state dict (the classifier
    `fc.*` is dropped; any other missing or unexpected key is an error)."""
    import segmentation_models_pytorch as smp

    encoder = smp.encoders.get_encoder("resnet50", in_channels=3, depth=5, weights=None)
    weights = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    encoder.load_state_dict(weights, strict=True)
    return encoder


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _processor_normalisation(folder: Path) -> tuple[list[float], list[float]]:
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if path.exists():
            config = json.loads(path.read_text())
            config = config.get("image_processor", config)
            if "image_mean" in config and "image_std" in config:
                return list(config["image_mean"]), list(config["image_std"])
    logger.warning("%s has no image processor config; normalising with ImageNet mean/std.", folder)
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def load_frozen_encoder(name_or_path: str, n_levels: int = 4) -> FrozenEncoder:
    """A saved cxrfm folder (chexfound, mgca, relaxed_clip), a transformers Dinov2 folder, or a timm model name
    (random weights, or `hf-hub:<repo>` for timm's pretrained weights from the local cache) -> FrozenEncoder."""
    folder = Path(name_or_path)
    if folder.is_dir():
        config_path = folder / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"encoder folder {folder} has no config.json; save it with save_pretrained.")
        model_type = json.loads(config_path.read_text()).get("model_type")
        mean, std = _processor_normalisation(folder)
        return _load_folder(folder, model_type, n_levels, mean, std)
    import timm

    if name_or_path.startswith("hf-hub:") or timm.is_model(name_or_path):
        pretrained = name_or_path.startswith("hf-hub:")
        if not pretrained:
            logger.warning("timm model %s is built with random weights (pass hf-hub:<repo> for pretrained ones).", name_or_path)
        model = timm.create_model(name_or_path, pretrained=pretrained, features_only=True)
        channels = model.feature_info.channels()
        if len(channels) != 5 or model.feature_info.reduction() != [2, 4, 8, 16, 32]:
            raise ValueError(f"timm model {name_or_path} does not give five stages at strides 2..32.")
        data_config = timm.data.resolve_data_config({}, model=model)
        return CNNEncoder(model, channels, data_config["mean"], data_config["std"], name_or_path, drops_input=False)
    raise ValueError(
        f"encoder {name_or_path!r} is neither an existing folder nor a timm model name: pass a folder saved with "
        "save_pretrained (chexfound, mgca, relaxed_clip, dinov2) or a timm name such as 'resnet50'."
    )


def _load_folder(folder: Path, model_type: str | None, n_levels: int, mean, std) -> FrozenEncoder:
    source = str(folder)
    if model_type == "chexfound":
        from cxrfm.modeling.chexfound import CheXFoundModel

        return CheXFoundEncoder(CheXFoundModel.from_pretrained(folder), n_levels, mean, std, source)
    if model_type == "relaxed_clip":
        from cxrfm.modeling.relaxed_clip import RelaxedCLIPModel

        tower = RelaxedCLIPModel.from_pretrained(folder).vision_model
        return HiddenStatesViTEncoder(tower, tower.config.patch_size, tower.config.hidden_size, 1, n_levels, mean, std, source)
    if model_type == "dinov2":
        from transformers import Dinov2Model

        model = Dinov2Model.from_pretrained(folder)
        prefix = 1 + getattr(model.config, "num_register_tokens", 0)
        return HiddenStatesViTEncoder(model, model.config.patch_size, model.config.hidden_size, prefix, n_levels, mean, std, source)
    if model_type == "mgca":
        from cxrfm.modeling.mgca import MGCAModel

        return _mgca_encoder(MGCAModel.from_pretrained(folder), n_levels, mean, std, source)
    raise ValueError(f"{folder}/config.json has model_type {model_type!r}; dense transfer supports chexfound, mgca, "
                     "relaxed_clip and dinov2 folders.")


def _mgca_encoder(model, n_levels: int, mean, std, source: str) -> FrozenEncoder:
    """MGCA's timm image encoder, at the dense input size (the official 299-px upsampling is a pretraining detail).
    A standard ResNet-50 runs as smp's ResNet-50 encoder holding its weights; a reduced one (the tiny presets:
    fewer blocks, narrower stages, which smp's encoder cannot hold) through timm's `forward_intermediates`."""
    vision = model.vision_model
    if model.config.is_vit:
        return _TimmViTEncoder(vision, n_levels, mean, std, source)
    if model.config.vision_backbone == "resnet50" and not model.config.vision_kwargs:
        return CNNEncoder(resnet50_as_smp_encoder(vision.state_dict()), [64, 256, 512, 1024, 2048],
                          mean, std, source, drops_input=True)
    channels = [info["num_chs"] for info in vision.feature_info]
    return CNNEncoder(_TimmStages(vision), channels, mean, std, source, drops_input=False)


class _TimmStages(nn.Module):
    """A timm CNN's five stages (stem, then each layer) through `forward_intermediates`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.forward_intermediates(pixel_values, intermediates_only=True)


class _TimmViTEncoder(FrozenEncoder):
    """A timm VisionTransformer: the last `n_levels` blocks (final norm applied), prefix tokens dropped."""

    def __init__(self, vit, n_levels: int, mean, std, source: str):
        _check_depth(len(vit.blocks), n_levels, source)
        super().__init__("vit", [vit.embed_dim] * n_levels, mean, std, source)
        self.model, self.n_levels = vit, n_levels
        self.freeze()

    def features(self, pixel_values):
        return self.model.forward_intermediates(
            pixel_values, indices=self.n_levels, norm=True, output_fmt="NCHW", intermediates_only=True
        )


__all__ = [
    "CNNAdapter",
    "FrozenEncoder",
    "ViTPyramidAdapter",
    "build_adapter",
    "load_frozen_encoder",
    "resnet50_as_smp_encoder",
    "tokens_to_map",
]

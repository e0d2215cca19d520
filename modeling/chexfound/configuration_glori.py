"""Configuration of GLoRI (Global and Local Representations Integration), CheXFound's multi-label head.

A composite config in the pattern of transformers' `CLIPConfig`: the frozen backbone is a sub-config
(`backbone_config`, a `CheXFoundConfig`) and the head fields sit beside it. Defaults are the paper's
setting (arXiv 2502.05142 §IV-B2; RPIDIAL/CheXFound `eval/classification/glori.py`, run with `--glori --cat-cls`).
"""

from transformers import AutoConfig, PreTrainedConfig

from .configuration_chexfound import CheXFoundConfig, HubConfigMixin

# Presets are data: name -> (backbone preset, backbone overrides, head keyword arguments). The tiny backbone gets
# 4 blocks so that the tiny head reads the paper's last-4-block features.
GLORI_PRESETS: dict[str, tuple[str, dict, dict]] = {
    "tiny": ("tiny", dict(num_hidden_layers=4), dict(decoder_dim=32, num_heads=4, ffn_dim=64)),
    "paper": ("chexfound-vit-large-patch16-512", {}, {}),
}
HEAD_TYPES = ("glori", "linear")


class GLoRIConfig(HubConfigMixin, PreTrainedConfig):
    r"""Configuration of [`GLoRIForMultiLabel`]: a CheXFound backbone plus a GLoRI (or linear-probe) head.

    The number of classes is `num_labels` (from `id2label`); each class is one disease query. Opportunistic
    targets (CVD risk, mortality) are just more labels.

    Args:
        backbone_config (`CheXFoundConfig` or `dict`, *optional*):
            The backbone. Defaults to the released CheXFound ViT-L/16 at 512 px.
        head (`str`, defaults to `"glori"`):
            `"glori"` (Eq. 1-2 + CLS skip + group FC) or `"linear"` (the official linear probe: a linear layer on
            the concatenated CLS tokens of the last `n_last_blocks` blocks).
        n_last_blocks (`int`, defaults to 4):
            How many of the last blocks' final-normed tokens are concatenated along channels (input width
            `n_last_blocks * backbone_config.hidden_size`).
        decoder_dim (`int`, defaults to 768):
            D_GLoRI, the width of the projected patch tokens and of the queries (official choices 384 / 768).
        num_heads (`int`, defaults to 8):
            Heads of the cross-attention; must divide `decoder_dim`.
        ffn_dim (`int`, defaults to 2048):
            Hidden width of the decoder layer's feed-forward block.
        dropout (`float`, defaults to 0.1):
            Dropout of the decoder layer (residual branches, attention probabilities and FFN).
        cat_cls (`bool`, defaults to `True`):
            Join the concatenated CLS tokens (CLS first) to every output query before the per-class linear, the
            paper's global-local integration. `False` is the layout of the released `glori.pth`.
        linear_avgpool (`bool`, defaults to `False`):
            Linear probe only: also append the mean of the last block's patch tokens to the CLS features.
        decoder_layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the decoder layer's three LayerNorms (PyTorch default, as in the official layer).

    Example:

    ```python
    >>> from cxrfm.modeling import GLoRIConfig, GLoRIForMultiLabel
    >>> config = GLoRIConfig.from_preset("tiny", id2label={0: "Cardiomegaly", 1: "Edema"})
    >>> model = GLoRIForMultiLabel(config)
    ```
    """

    model_type = "chexfound_glori"
    sub_configs_defaults = {"backbone_config": CheXFoundConfig}
    hub_pipelines = {
        "cxr-classification": {
            "impl": "pipeline_cxr_classification.CXRClassificationPipeline",
            "pt": ["AutoModelForImageClassification"],
            "type": "image",
        }
    }

    def __init__(
        self,
        backbone_config: CheXFoundConfig | dict | None = None,
        head: str = "glori",
        n_last_blocks: int = 4,
        decoder_dim: int = 768,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        cat_cls: bool = True,
        linear_avgpool: bool = False,
        decoder_layer_norm_eps: float = 1e-5,
        **kwargs,
    ):
        # Resolved here rather than by transformers' generic sub-config code: the key "backbone_config" is routed
        # through `AutoConfig` model-type lookup there, which fails in the remote-code route where "chexfound" is not
        # registered with transformers.
        if backbone_config is None:
            backbone_config = CheXFoundConfig()
        elif isinstance(backbone_config, dict):
            backbone_config = CheXFoundConfig(**backbone_config)
        elif not isinstance(backbone_config, CheXFoundConfig):
            raise TypeError(
                f"GLoRIConfig: backbone_config must be a CheXFoundConfig, a dict or None, got {type(backbone_config)}."
            )
        self.backbone_config = backbone_config
        self.head = head
        self.n_last_blocks = n_last_blocks
        self.decoder_dim = decoder_dim
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.cat_cls = cat_cls
        self.linear_avgpool = linear_avgpool
        self.decoder_layer_norm_eps = decoder_layer_norm_eps
        kwargs.setdefault("problem_type", "multi_label_classification")
        if kwargs.get("id2label") is not None and kwargs.get("label2id") is None:
            kwargs["label2id"] = {name: int(index) for index, name in kwargs["id2label"].items()}
        super().__init__(**kwargs)
        self._validate_fields()

    def _validate_fields(self) -> None:
        if self.head not in HEAD_TYPES:
            raise ValueError(f"GLoRIConfig: head must be one of {HEAD_TYPES}, got {self.head!r}.")
        if self.problem_type != "multi_label_classification":
            raise ValueError(
                f"GLoRIConfig: problem_type must be 'multi_label_classification' (sigmoid per finding), "
                f"got {self.problem_type!r}."
            )
        num_layers = self.backbone_config.num_hidden_layers
        if not 1 <= self.n_last_blocks <= num_layers:
            raise ValueError(
                f"GLoRIConfig: n_last_blocks={self.n_last_blocks} must be in [1, {num_layers}] "
                f"(backbone_config.num_hidden_layers)."
            )
        if self.decoder_dim % self.num_heads:
            raise ValueError(
                f"GLoRIConfig: decoder_dim={self.decoder_dim} must be divisible by num_heads={self.num_heads}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GLoRIConfig: dropout must be in [0, 1), got {self.dropout}.")

    def to_dict(self) -> dict:
        output = super().to_dict()
        # The backbone's own pipelines are not this folder's: a GLoRI folder runs cxr-classification only.
        if isinstance(output.get("backbone_config"), dict):
            output["backbone_config"].pop("custom_pipelines", None)
        return output

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated last-`n_last_blocks` tokens fed to the head (4 x 1024 = 4096 in the paper)."""
        return self.n_last_blocks * self.backbone_config.hidden_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GLoRIConfig":
        """Config of a named preset (see `GLORI_PRESETS`) with optional head/label overrides; a `backbone_config`
        override replaces the preset's backbone."""
        if name not in GLORI_PRESETS:
            raise ValueError(f"Unknown GLoRI preset {name!r}; valid presets: {', '.join(sorted(GLORI_PRESETS))}.")
        backbone_preset, backbone_kwargs, head_kwargs = GLORI_PRESETS[name]
        overrides.setdefault("backbone_config", CheXFoundConfig.from_preset(backbone_preset, **backbone_kwargs))
        return cls(**{**head_kwargs, **overrides})


GLoRIConfig.register_for_auto_class()
if __name__.split(".")[0] == "cxrfm":  # library route; see configuration_chexfound.py
    AutoConfig.register(GLoRIConfig.model_type, GLoRIConfig, exist_ok=True)

__all__ = ["GLORI_PRESETS", "GLoRIConfig"]

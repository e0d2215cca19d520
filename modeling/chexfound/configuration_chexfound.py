"""Configuration of the CheXFound vision backbone (a DINOv2-style ViT with registers and SwiGLU FFN).

Field names follow transformers' ``Dinov2Config`` where the two overlap. Defaults describe the released
CheXFound model (arXiv 2502.05142; RPIDIAL/CheXFound ``vitl16_ibot333_highres512.yaml``): ViT-L/16 at
512x512, SwiGLU FFN, 4 register tokens, LayerScale 1e-5, LayerNorm eps 1e-6.
"""

from transformers import AutoConfig, PreTrainedConfig

# Presets are data: name -> keyword arguments of CheXFoundConfig (cf. timm default_cfgs, open_clip JSONs).
# The size presets are the DINOv2 default recipe at each size (GELU MLP, no registers, LayerScale 1e-5);
# "chexfound-vit-large-patch16-512" is the released CheXFound backbone.
_VIT_SIZES = {
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
}
CHEXFOUND_PRESETS: dict[str, dict] = {
    "tiny": dict(
        image_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_register_tokens=2,
        use_swiglu_ffn=True,
    ),
    **{
        f"vit-{size}-patch16-{image_size}": dict(
            image_size=image_size, use_swiglu_ffn=False, num_register_tokens=0, **dims
        )
        for size, dims in _VIT_SIZES.items()
        for image_size in (224, 512)
    },
    "chexfound-vit-large-patch16-512": dict(
        image_size=512,
        patch_size=16,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        mlp_ratio=4.0,
        use_swiglu_ffn=True,
        num_register_tokens=4,
        layerscale_value=1e-5,
        layer_norm_eps=1e-6,
    ),
}


class HubConfigMixin:
    """The Hub contract of a cxrfm config (mixed in before `PreTrainedConfig`).

    - `hub_pipelines` (task -> a transformers `custom_pipelines` entry) goes into every saved `config.json`, so
      `pipeline(task, model=folder, trust_remote_code=True)` finds the pipeline file the model module copies beside
      the weights (`custom_object_save` follows the model module's relative imports).
    - Installed cxrfm registers those tasks itself, so on that route a loaded config drops `custom_pipelines`:
      transformers asks for `trust_remote_code=True` for every task a config lists there.
    - A folder of another model family is refused, naming both, instead of building a random model from it.
    """

    hub_pipelines: dict = {}

    def __init__(self, **kwargs):
        if __name__.split(".")[0] == "cxrfm":
            kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # Checked here, before transformers would pick a matching sub-config out of another family's folder (a
        # GLoRI folder holds a CheXFound backbone_config) and load weights whose keys do not match: a random model.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path}: holds a '{found}' model, another model family; {cls.__name__} loads "
                f"'{cls.model_type}' folders. Load it with AutoModel or with the '{found}' family's class."
            )
        return config_dict, kwargs

    def to_dict(self) -> dict:
        output = super().to_dict()
        if self.hub_pipelines:
            output["custom_pipelines"] = {task: dict(entry) for task, entry in self.hub_pipelines.items()}
        return output


class CheXFoundConfig(HubConfigMixin, PreTrainedConfig):
    r"""Configuration of [`CheXFoundModel`]. Defaults build the released CheXFound ViT-L/16 at 512 px.

    Args:
        image_size (`int`, defaults to 512):
            Side of the square training image; the stored position embeddings cover a
            `(image_size // patch_size) ** 2` grid (plus the CLS slot). Other sizes divisible by
            `patch_size` are handled by interpolating them.
        patch_size (`int`, defaults to 16):
            Side of each square patch.
        num_channels (`int`, defaults to 3):
            Input channels of `pixel_values`.
        hidden_size (`int`, defaults to 1024):
            Token width D.
        num_hidden_layers (`int`, defaults to 24):
            Number of transformer blocks.
        num_attention_heads (`int`, defaults to 16):
            Attention heads per block; must divide `hidden_size`.
        mlp_ratio (`float`, defaults to 4.0):
            FFN width as a multiple of `hidden_size`. With `use_swiglu_ffn` the SwiGLU hidden width is
            `(int(hidden_size * mlp_ratio * 2 / 3) + 7) // 8 * 8` (2736 for ViT-L), as in DINOv2.
        hidden_act (`str`, defaults to `"gelu"`):
            Activation of the plain MLP FFN (ignored when `use_swiglu_ffn`).
        layerscale_value (`float` or `None`, defaults to 1e-5):
            Initial LayerScale gamma; `None` builds blocks without LayerScale.
        use_swiglu_ffn (`bool`, defaults to `True`):
            Use the SwiGLU FFN with a packed `fc1` (official `w12`) instead of the GELU MLP.
        num_register_tokens (`int`, defaults to 4):
            Register tokens inserted between CLS and the patches; they carry no position embedding.
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth rate (CheXFound pretraining used 0.4 for the student, 0 for the teacher). timm's
            per-sample DropPath is used; for rates > 0.1 the official code instead drops the residual branch of
            a random batch subset and rescales it, which has the same expectation.
        drop_path_uniform (`bool`, defaults to `True`):
            Same drop-path rate in every block (DINOv2/CheXFound); `False` uses timm's linear ramp 0 -> rate.
        qkv_bias (`bool`, defaults to `True`):
            Bias on the fused query/key/value projection.
        initializer_range (`float`, defaults to 0.02):
            Std of the truncated normal for Linear weights and position embeddings.
        interpolate_offset (`float`, defaults to 0.1):
            Offset of the official position-embedding interpolation: scale factor `(grid + offset) / stored_grid`.
            `0` interpolates to the exact target grid instead.
        interpolate_antialias (`bool`, defaults to `False`):
            Antialiasing of the bicubic position-embedding interpolation (CheXFound: off).

    Example:

    ```python
    >>> from cxrfm.modeling import CheXFoundConfig, CheXFoundModel
    >>> config = CheXFoundConfig.from_preset("tiny")
    >>> model = CheXFoundModel(config)
    ```
    """

    model_type = "chexfound"
    hub_pipelines = {
        "cxr-feature-extraction": {
            "impl": "pipeline_cxr_feature_extraction.CXRFeatureExtractionPipeline",
            "pt": ["AutoModel"],
            "type": "image",
        }
    }

    def __init__(
        self,
        image_size: int = 512,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        mlp_ratio: float = 4.0,
        hidden_act: str = "gelu",
        layerscale_value: float | None = 1e-5,
        use_swiglu_ffn: bool = True,
        num_register_tokens: int = 4,
        layer_norm_eps: float = 1e-6,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.hidden_act = hidden_act
        self.layerscale_value = layerscale_value
        self.use_swiglu_ffn = use_swiglu_ffn
        self.num_register_tokens = num_register_tokens
        self.layer_norm_eps = layer_norm_eps
        self.drop_path_rate = drop_path_rate
        self.drop_path_uniform = drop_path_uniform
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias
        super().__init__(**kwargs)
        self._validate_fields()

    def _validate_fields(self) -> None:
        if not isinstance(self.image_size, int) or not isinstance(self.patch_size, int):
            raise ValueError(
                f"CheXFoundConfig: image_size and patch_size must be int (square), got "
                f"image_size={self.image_size!r}, patch_size={self.patch_size!r}."
            )
        if self.patch_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(
                f"CheXFoundConfig: image_size={self.image_size} must be a positive multiple of "
                f"patch_size={self.patch_size}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CheXFoundConfig: hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.num_register_tokens < 0:
            raise ValueError(f"CheXFoundConfig: num_register_tokens must be >= 0, got {self.num_register_tokens}.")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"CheXFoundConfig: drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")
        if self.layerscale_value is not None and self.layerscale_value <= 0:
            raise ValueError(
                f"CheXFoundConfig: layerscale_value must be > 0 or None (no LayerScale), got {self.layerscale_value}."
            )
        if self.interpolate_offset < 0:
            raise ValueError(f"CheXFoundConfig: interpolate_offset must be >= 0, got {self.interpolate_offset}.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CheXFoundConfig":
        """Config of a named preset (see `CHEXFOUND_PRESETS`), with optional field overrides."""
        if name not in CHEXFOUND_PRESETS:
            raise ValueError(
                f"Unknown CheXFound preset {name!r}; valid presets: {', '.join(sorted(CHEXFOUND_PRESETS))}."
            )
        return cls(**{**CHEXFOUND_PRESETS[name], **overrides})


# Hub route: save_pretrained copies this file and writes auto_map.AutoConfig.
CheXFoundConfig.register_for_auto_class()
# Library route: only the installed package claims the model type (a remote-code copy must not).
if __name__.split(".")[0] == "cxrfm":
    AutoConfig.register(CheXFoundConfig.model_type, CheXFoundConfig, exist_ok=True)

__all__ = ["CHEXFOUND_PRESETS", "CheXFoundConfig", "HubConfigMixin"]

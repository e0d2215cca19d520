"""Configuration of the relaxed-CLIP dual encoder (Jang, Kyung et al., "Significantly Improving Zero-Shot X-ray
Pathology Classification via Fine-tuning Pre-trained Image-Text Encoders", arXiv 2212.07050; paper 002)."""

import math

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

POOLING_CHOICES = ("pooler", "cls", "mean")

# A 2-layer, 32-wide CLIP image tower on 32 px images, shared by both tiny presets.
TINY_VISION_TOWER = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}

# Presets are data: name -> kwargs of RelaxedCLIPConfig. "paper" is the paper's ViT-B/16 image tower with a
# CLIP text tower (what OpenAI's CLIP ViT-B/16 holds); "paper-bert" swaps in a BERT-base text tower (Sec. 4.3 names
# BERT-base); "tiny" and "tiny-bert" are for tests.
RELAXED_CLIP_PRESETS = {
    "paper": {
        "vision_config": {"model_type": "clip_vision_model", "patch_size": 16, "image_size": 224},
        "text_config": {"model_type": "clip_text_model"},
        "projection_dim": 512,
    },
    "paper-bert": {
        "vision_config": {"model_type": "clip_vision_model", "patch_size": 16, "image_size": 224},
        "text_config": {"model_type": "bert"},
        "projection_dim": 512,
        "text_pooling": "cls",
    },
    "tiny": {
        "vision_config": TINY_VISION_TOWER,
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": 128,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        "projection_dim": 16,
    },
    # tiny image tower + a 1-layer BERT text tower with BERT's 30522-word vocabulary, so that a real WordPiece
    # tokenizer (e.g. MiniLM's) feeds it: for CPU recipe runs and tests.
    "tiny-bert": {
        "vision_config": TINY_VISION_TOWER,
        "text_config": {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 128,
        },
        "projection_dim": 16,
        "text_pooling": "cls",
    },
}


# Copied from cxrfm.modeling.chexfound.configuration_chexfound.HubConfigMixin (a model folder imports only its own
# files; tests/test_family_contract.py checks the copies stay equal)
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


class RelaxedCLIPConfig(HubConfigMixin, PreTrainedConfig):
    r"""Configuration of [`RelaxedCLIPModel`]: an image tower and a text tower from transformers, one linear
    projection per tower into a shared space, and a learnable temperature.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the image tower; its `model_type` picks the transformers class built with `AutoModel`
            (default `"clip_vision_model"`, i.e. [`CLIPVisionModel`]; any vision model with a `pooler_output` or a
            CLS token works, e.g. `"vit"`).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the text tower (default `"clip_text_model"`, i.e. [`CLIPTextModel`]; any BERT-family
            `model_type` such as `"bert"` works, the paper's BERT-base being one).
        projection_dim (`int`, *optional*, defaults to 512):
            Dimension of the shared image-text embedding space.
        projection_bias (`bool`, *optional*, defaults to `False`):
            Whether the two projections have a bias (CLIP's have none).
        vision_pooling (`str`, *optional*, defaults to `"pooler"`):
            How an image becomes one vector before the projection: `"pooler"` (the tower's `pooler_output`; for
            CLIP the layer-normed CLS token), `"cls"` (first token of `last_hidden_state`) or `"mean"` (mean of the
            tokens after the first).
        text_pooling (`str`, *optional*, defaults to `"pooler"`):
            Same for text: `"pooler"` (CLIP: the EOS token; BERT: tanh-dense of [CLS]), `"cls"` or `"mean"` (mean
            over tokens where `attention_mask` is 1, the sentence-transformers pooling of MiniLM).
        logit_scale_init_value (`float`, *optional*, defaults to ln(1/0.07) = 2.6593):
            Initial value of the learnable log inverse temperature log(1/tau) (CLIP's initialisation).
        logit_scale_max (`float`, *optional*, defaults to ln(100) = 4.6052):
            The log inverse temperature is clamped to this value in `forward`, as CLIP does ("clipped to prevent
            scaling the logits by more than 100"). The relaxed-CLIP paper does not say; we keep CLIP's clamp.
        relax_positives (`bool`, *optional*, defaults to `True`):
            Whether `forward(return_loss=True)` uses the relaxed similarity of Eq. 3 on positive pairs.
        relax_threshold (`float`, *optional*, defaults to 0.5):
            Threshold t of Eq. 3, 0 < t < 1 (paper: 0.5).
        relax_alpha (`float`, *optional*, defaults to 10.0):
            Sigmoid slope alpha of Eq. 3 (paper: 10).
    """

    model_type = "relaxed_clip"
    hub_pipelines = {
        "cxr-zero-shot-classification": {
            "impl": "pipeline_cxr_zero_shot_classification.CXRZeroShotClassificationPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model"),
    }

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        projection_dim: int = 512,
        projection_bias: bool = False,
        vision_pooling: str = "pooler",
        text_pooling: str = "pooler",
        logit_scale_init_value: float = math.log(1 / 0.07),
        logit_scale_max: float = math.log(100.0),
        relax_positives: bool = True,
        relax_threshold: float = 0.5,
        relax_alpha: float = 10.0,
        **kwargs,
    ):
        for name, value in (("vision_pooling", vision_pooling), ("text_pooling", text_pooling)):
            if value not in POOLING_CHOICES:
                raise ValueError(f"RelaxedCLIPConfig.{name} must be one of {POOLING_CHOICES}, got {value!r}.")
        if not 0.0 < relax_threshold < 1.0:
            raise ValueError(f"RelaxedCLIPConfig.relax_threshold is t of Eq. 3 and needs 0 < t < 1, got {relax_threshold}.")
        if relax_alpha <= 0:
            raise ValueError(f"RelaxedCLIPConfig.relax_alpha is a sigmoid slope and must be > 0, got {relax_alpha}.")
        self.vision_config = vision_config
        self.text_config = text_config
        self.projection_dim = projection_dim
        self.projection_bias = projection_bias
        self.vision_pooling = vision_pooling
        self.text_pooling = text_pooling
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_scale_max = logit_scale_max
        self.relax_positives = relax_positives
        self.relax_threshold = relax_threshold
        self.relax_alpha = relax_alpha
        # PreTrainedConfig.__post_init__ turns the two dicts into configs through `sub_configs_defaults`.
        super().__init__(**kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # One model class serves two Auto classes; register_for_auto_class writes one, so the stock
        # zero-shot-image-classification pipeline's AutoModelForZeroShotImageClassification gets the same entry.
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict) and "AutoModel" in auto_map:
            auto_map.setdefault("AutoModelForZeroShotImageClassification", auto_map["AutoModel"])
        return output

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "RelaxedCLIPConfig":
        """Config of a named preset in `RELAXED_CLIP_PRESETS` (`"paper"`, `"paper-bert"`, `"tiny"`, `"tiny-bert"`); keyword
        arguments override preset fields."""
        if name not in RELAXED_CLIP_PRESETS:
            raise ValueError(f"Unknown RelaxedCLIP preset {name!r}; choose one of {sorted(RELAXED_CLIP_PRESETS)}.")
        kwargs = {key: (dict(value) if isinstance(value, dict) else value) for key, value in RELAXED_CLIP_PRESETS[name].items()}
        kwargs.update(overrides)
        return cls(**kwargs)


# Hub route: save_pretrained copies this file and writes auto_map.AutoConfig.
RelaxedCLIPConfig.register_for_auto_class()
# Library route: only the installed package claims the model type (a remote-code copy must not).
if __name__.split(".")[0] == "cxrfm":
    AutoConfig.register(RelaxedCLIPConfig.model_type, RelaxedCLIPConfig, exist_ok=True)

__all__ = ["RelaxedCLIPConfig", "RELAXED_CLIP_PRESETS"]

"""Configuration of MGCA (Wang et al., "Multi-Granularity Cross-modal Alignment for Generalized Medical Visual
Representation Learning", NeurIPS 2022; paper 004; official code github.com/HKU-MedAI/MGCA).

Defaults are the paper as printed (`paper` preset). The `official` presets reproduce what the authors' code runs
(`mgca/models/mgca/mgca_module.py`, `mgca/models/backbones/encoder.py`), so released checkpoints give the authors'
embeddings; each departure is one field below, named in its docstring entry.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

VISION_BACKBONES = ("vit", "resnet")
CROSS_ATTENTION_CHOICES = ("learned", "parameter_free")
WORD_PIECE_MERGE_CHOICES = ("sum", "mean", "none")
REDUCTION_CHOICES = ("mean", "sum")

# Bio_ClinicalBERT's architecture (BERT-base, cased vocabulary of 28996); the number of layers is a preset field.
BIO_CLINICAL_BERT = {
    "model_type": "bert",
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
TINY_TEXT = {
    "model_type": "bert",
    "vocab_size": 30522,  # BERT's uncased WordPiece vocabulary, so a real fast tokenizer feeds the tiny tower
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}
# timm's resnet50 with one block per stage and narrow stages: the same module names as ResNet-50, so the
# conversion, layer-3 tokens and dense-transfer code paths run unchanged on CPU.
TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}

# What the authors' code runs, against the paper (see reference notes §1 and the field docs).
_OFFICIAL = {
    "text_config": {**BIO_CLINICAL_BERT, "num_hidden_layers": 6},
    "ita_temperature": 0.07,
    "cta_temperature": 0.1,
    "ita_reduction": "sum",
    "cta_reduction": "sum",
    "cta_token_average": False,
    "cross_attention": "parameter_free",
    "normalize_image_to_word_output": False,
    "word_piece_merge": "sum",
    "mask_special_tokens": False,
    "word_weight_shift": True,
    "drop_last_word_when_unpadded": True,
    "text_zero_position_ids": True,
    "text_token_type_embeddings": False,
    "renormalize_prototypes": True,
    "gather_negatives": False,
    "distributed_sinkhorn": False,
    "freeze_prototypes_epochs": 1,
}

# Presets are data: name -> kwargs of MGCAConfig.
MGCA_PRESETS: dict[str, dict] = {
    "paper": {},
    "official": dict(_OFFICIAL),
    # The official ResNet-50 run: the code normalises the image->word output for CNNs (`"vit" not in img_encoder`).
    "official-resnet50": {**_OFFICIAL, "vision_backbone": "resnet50", "normalize_image_to_word_output": True},
    "tiny": {
        "vision_kwargs": TINY_VIT,
        "image_size": 32,
        "text_config": TINY_TEXT,
        "projection_dim": 16,
        "projection_hidden_size": 32,
        "num_prototypes": 8,
    },
    "tiny-official": {
        **_OFFICIAL,
        "vision_kwargs": TINY_VIT,
        "image_size": 32,
        "text_config": TINY_TEXT,
        "projection_dim": 16,
        "projection_hidden_size": 32,
        "num_prototypes": 8,
    },
    "tiny-resnet": {
        "vision_backbone": "resnet50",
        "vision_kwargs": TINY_RESNET,
        "image_size": 32,
        "resnet_upsample_size": 64,
        "text_config": TINY_TEXT,
        "projection_dim": 16,
        "projection_hidden_size": 32,
        "num_prototypes": 8,
    },
    "tiny-official-resnet50": {
        **_OFFICIAL,
        "normalize_image_to_word_output": True,
        "vision_backbone": "resnet50",
        "vision_kwargs": TINY_RESNET,
        "image_size": 32,
        "resnet_upsample_size": 64,
        "text_config": TINY_TEXT,
        "projection_dim": 16,
        "projection_hidden_size": 32,
        "num_prototypes": 8,
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


class MGCAConfig(HubConfigMixin, PreTrainedConfig):
    r"""Configuration of [`MGCAModel`]. Defaults are the paper's ViT-B/16 + 6-layer Bio_ClinicalBERT model read as
    printed (Sec. 3-4.1); "official" marks what github.com/HKU-MedAI/MGCA runs instead.

    Args:
        vision_backbone (`str`, defaults to `"vit_base_patch16_224"`):
            timm model name of the image encoder: a ViT (global = [CLS], local = patch tokens, token weights from
            the last block's [CLS] attention) or `"resnet50"` (global = pooled layer 4, local = layer-3 tokens,
            uniform token weights), as the official code.
        vision_kwargs (`dict`, *optional*):
            Extra `timm.create_model` arguments (e.g. `embed_dim`, `depth` for small test models).
        image_size (`int`, defaults to 224):
            Input side of `pixel_values`.
        resnet_upsample_size (`int` or `None`, defaults to 299):
            ResNet only: inputs are bilinearly upsampled (align_corners=True) to this side first, as the official
            code does (224 -> 299, 19x19 = 361 layer-3 tokens). `None` disables it.
        text_config (`dict` or `BertConfig`, *optional*):
            The text encoder, a transformers BERT; defaults to Bio_ClinicalBERT's architecture with 6 layers (the
            official `bert_config.json` keeps the first 6 of 12).
        projection_dim (`int`, defaults to 128):
            d, the shared embedding width.
        projection_hidden_size (`int`, defaults to 2048):
            Hidden width of the MLP+BatchNorm projection heads (official `GlobalEmbedding`/`LocalEmbedding`).
        ita_temperature (`float`, defaults to 0.1):
            tau_1 of Eq. 2 (paper 0.1; official `softmax_temperature` 0.07).
        cta_temperature (`float`, defaults to 0.07):
            tau_2 of Eq. 5 (paper 0.07; official `local_temperature` 0.1, also used inside the parameter-free
            cross-attention).
        cpa_temperature (`float`, defaults to 0.2):
            tau_3 of Eq. 7 (paper and official 0.2).
        sinkhorn_epsilon (`float`, defaults to 0.05), sinkhorn_iterations (`int`, defaults to 3):
            Sinkhorn-Knopp entropy weight and iterations (official values; the paper gives none).
        num_prototypes (`int`, defaults to 500):
            K, the number of cross-modal prototypes.
        lambda_ita, lambda_cta, lambda_cpa (`float`, default 1.0 each):
            lambda_1..3 of Eq. 10 (paper 1/1/1; the official argparse defaults are also 1/1/1).
        ita_reduction (`str`, defaults to `"mean"`):
            `"mean"` averages the two directions (Eq. 3); official `"sum"` adds them.
        cta_reduction (`str`, defaults to `"mean"`):
            `"mean"` = Eq. 6, (L_LIA + L_LTA) / 2; official `"sum"` adds the patch and word losses.
        cta_token_average (`bool`, defaults to `True`):
            Divide the weighted token sum by the number of tokens S (the 1/(2NS) of Eq. 5 as printed); official
            `False` (weights sum to one per sample, no 1/S).
        token_weight_quantiles (`tuple[float, float]` or `None`, defaults to `(0.1, 0.9)`):
            Token weights are clipped to these per-sample quantiles of their non-zero values and renormalised to
            sum 1 (official; the paper states only the [CLS] attention). `None` skips the clipping.
        cross_attention (`str`, defaults to `"learned"`):
            `"learned"`: Eq. 4 with Q, K, V, O (one-head `nn.MultiheadAttention`, the official
            `{word,patch}_local_atten_layer`); `"parameter_free"`: softmax(q k^T / cta_temperature) v on the
            projected tokens, what the official code runs (`use_local_atten=False`).
        normalize_image_to_word_output (`bool`, defaults to `True`):
            L2-normalise the text embedding o attended by each visual token; official `False` for ViT.
        word_piece_merge (`str`, defaults to `"mean"`):
            How word pieces become one text token: `"mean"` (the paper is silent; mean keeps the scale of a
            token), official `"sum"` (embeddings and attention weights), or `"none"` (word pieces stay tokens).
        mask_special_tokens (`bool`, defaults to `True`):
            Keep [SEP] out of the text tokens; official `False` (it stays a token, a negative with weight 0).
            Padding is always masked as a query; as a negative only when this is `True` (official keeps padded
            slots as negatives).
        word_weight_shift (`bool`, defaults to `False`):
            Official quirk: each word takes the [CLS] attention of the next token.
        drop_last_word_when_unpadded (`bool`, defaults to `False`):
            Official quirk: a caption that fills `max_length` loses its last word and its [SEP].
        text_zero_position_ids (`bool`, defaults to `False`):
            Official quirk: the text encoder runs with every position id 0 (token types are passed as positions).
        text_token_type_embeddings (`bool`, defaults to `True`):
            `False` zeroes and freezes BERT's token-type embeddings (the official BLIP BERT has none).
        renormalize_prototypes (`bool`, defaults to `False`):
            Official: prototype rows are re-normalised in place at every forward and used as plain weights;
            `False` computes the cosine of Eq. 7 with normalised prototypes inside autograd.
        gather_negatives (`bool`, defaults to `True`):
            ITA negatives gathered from every process with gradients; official `False` (per-process batch).
        distributed_sinkhorn (`bool`, defaults to `True`):
            Sinkhorn sums reduced across processes; official `False` (local, see reference notes §1b).
        freeze_prototypes_epochs (`int`, defaults to 0):
            Prototype gradients are dropped during the first N epochs (official 1; applied by the recipe).
        cpa_start_epoch (`int`, defaults to 0):
            First epoch with the CPA term (official: from step 0; applied by the recipe).
        initializer_range (`float`, defaults to 0.02):
            Std of the prototype and cross-attention initialisation.
    """

    model_type = "mgca"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    def __init__(
        self,
        vision_backbone: str = "vit_base_patch16_224",
        vision_kwargs: dict | None = None,
        image_size: int = 224,
        resnet_upsample_size: int | None = 299,
        text_config=None,
        projection_dim: int = 128,
        projection_hidden_size: int = 2048,
        ita_temperature: float = 0.1,
        cta_temperature: float = 0.07,
        cpa_temperature: float = 0.2,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        num_prototypes: int = 500,
        lambda_ita: float = 1.0,
        lambda_cta: float = 1.0,
        lambda_cpa: float = 1.0,
        ita_reduction: str = "mean",
        cta_reduction: str = "mean",
        cta_token_average: bool = True,
        token_weight_quantiles: tuple[float, float] | None = (0.1, 0.9),
        cross_attention: str = "learned",
        normalize_image_to_word_output: bool = True,
        word_piece_merge: str = "mean",
        mask_special_tokens: bool = True,
        word_weight_shift: bool = False,
        drop_last_word_when_unpadded: bool = False,
        text_zero_position_ids: bool = False,
        text_token_type_embeddings: bool = True,
        renormalize_prototypes: bool = False,
        gather_negatives: bool = True,
        distributed_sinkhorn: bool = True,
        freeze_prototypes_epochs: int = 0,
        cpa_start_epoch: int = 0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        for name, value, choices in (
            ("cross_attention", cross_attention, CROSS_ATTENTION_CHOICES),
            ("word_piece_merge", word_piece_merge, WORD_PIECE_MERGE_CHOICES),
            ("ita_reduction", ita_reduction, REDUCTION_CHOICES),
            ("cta_reduction", cta_reduction, REDUCTION_CHOICES),
        ):
            if value not in choices:
                raise ValueError(f"MGCAConfig.{name} must be one of {choices}, got {value!r}.")
        for name, value in (
            ("ita_temperature", ita_temperature),
            ("cta_temperature", cta_temperature),
            ("cpa_temperature", cpa_temperature),
            ("sinkhorn_epsilon", sinkhorn_epsilon),
        ):
            if value <= 0:
                raise ValueError(f"MGCAConfig.{name} must be > 0, got {value}.")
        if token_weight_quantiles is not None:
            low, high = token_weight_quantiles
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(
                    f"MGCAConfig.token_weight_quantiles needs 0 <= low <= high <= 1, got {token_weight_quantiles}."
                )
            token_weight_quantiles = (float(low), float(high))
        if text_config is None:
            text_config = {**BIO_CLINICAL_BERT, "num_hidden_layers": 6}
        if isinstance(text_config, dict) and text_config.get("model_type", "bert") != "bert":
            raise ValueError(f"MGCAConfig.text_config must be a BERT config, got model_type {text_config['model_type']!r}.")
        self.vision_backbone = vision_backbone
        self.vision_kwargs = dict(vision_kwargs or {})
        self.image_size = image_size
        self.resnet_upsample_size = resnet_upsample_size
        self.text_config = text_config
        self.projection_dim = projection_dim
        self.projection_hidden_size = projection_hidden_size
        self.ita_temperature = ita_temperature
        self.cta_temperature = cta_temperature
        self.cpa_temperature = cpa_temperature
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.num_prototypes = num_prototypes
        self.lambda_ita = lambda_ita
        self.lambda_cta = lambda_cta
        self.lambda_cpa = lambda_cpa
        self.ita_reduction = ita_reduction
        self.cta_reduction = cta_reduction
        self.cta_token_average = cta_token_average
        self.token_weight_quantiles = token_weight_quantiles
        self.cross_attention = cross_attention
        self.normalize_image_to_word_output = normalize_image_to_word_output
        self.word_piece_merge = word_piece_merge
        self.mask_special_tokens = mask_special_tokens
        self.word_weight_shift = word_weight_shift
        self.drop_last_word_when_unpadded = drop_last_word_when_unpadded
        self.text_zero_position_ids = text_zero_position_ids
        self.text_token_type_embeddings = text_token_type_embeddings
        self.renormalize_prototypes = renormalize_prototypes
        self.gather_negatives = gather_negatives
        self.distributed_sinkhorn = distributed_sinkhorn
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.cpa_start_epoch = cpa_start_epoch
        self.initializer_range = initializer_range
        # PreTrainedConfig.__post_init__ turns the text dict into a BertConfig through `sub_configs_defaults`.
        super().__init__(**kwargs)

    @property
    def is_vit(self) -> bool:
        """Whether the image encoder is a ViT (token weights from its [CLS] attention) rather than a CNN."""
        return not self.vision_backbone.startswith("resnet")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MGCAConfig":
        """Config of a named preset in `MGCA_PRESETS` (`paper`, `official`, `official-resnet50`, `tiny`,
        `tiny-official`, `tiny-resnet`, `tiny-official-resnet50`); keyword arguments override preset fields."""
        if name not in MGCA_PRESETS:
            raise ValueError(f"Unknown MGCA preset {name!r}; choose one of {sorted(MGCA_PRESETS)}.")
        kwargs = {key: (dict(value) if isinstance(value, dict) else value) for key, value in MGCA_PRESETS[name].items()}
        kwargs.update(overrides)
        return cls(**kwargs)


# Hub route: save_pretrained copies this file and writes auto_map.AutoConfig.
MGCAConfig.register_for_auto_class()
# Library route: only the installed package claims the model type (a remote-code copy must not).
if __name__.split(".")[0] == "cxrfm":
    AutoConfig.register(MGCAConfig.model_type, MGCAConfig, exist_ok=True)

__all__ = ["MGCA_PRESETS", "HubConfigMixin", "MGCAConfig"]

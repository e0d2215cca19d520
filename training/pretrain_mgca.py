"""Pre-train MGCA (paper 004) on image-report pairs with Accelerate, on the recipe skeleton.

    accelerate launch -m cxrfm.training.pretrain_mgca --config training/configs/mgca_paper.yaml
    python -m cxrfm.training.pretrain_mgca --config training/configs/mgca_tiny.yaml        # CPU, phantom set

Per step: images and their captions (IMPRESSION + " " + FINDINGS, the official order; optionally the official
cleaning) go through `MGCAModel.forward`, which returns the ITA, CTA and CPA terms; the loop sums them (Eq. 10
with the config's lambdas). Schedule (Sec. 4.1): AdamW on every parameter, linear warm-up then cosine decay
(`warmup_ratio` of the steps; the official code warms up for 40% = 20 of 50 epochs). The official schedule
details are MGCAConfig fields applied by `MGCAObjective`: CPA from `cpa_start_epoch` (official 0) and prototype
gradients zeroed during the first `freeze_prototypes_epochs` epochs (official 1); prototype re-normalisation at
every forward (`renormalize_prototypes`) happens in the model. Images (`augmentation`): `official` is the authors'
pre-training preprocessing, the longer side resized to `letterbox_size` and zero-padded to a square (their
`resize_img`), then a random `image_size` crop per training image (their `RandomCrop`, offsets drawn from a generator
the checkpoints keep) and the centre crop in the exported processor (their validation `CenterCrop`); `none` resizes
the shortest edge and takes the centre crop for both. The model is exported with `save_pretrained`
and its `MGCAProcessor` at the end (+ `results.json` with the run's facts and its model card `README.md`); a rerun
with the same `output_dir` resumes from the latest checkpoint.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoTokenizer, BertModel, get_cosine_schedule_with_warmup

from ..model_cards import write_results_and_card
from ..modeling.mgca import MGCAConfig, MGCAModel, MGCAProcessor
from ..processing.augment_cxr import RandomCrop
from ..processing.datasets import LoaderOptions, load_dataset_by_name
from ..processing.image_processing_cxr import CXRImageProcessor
from ..processing.text import extract_sections
from .finetune_clip import resolve_path
from .recipe import (
    BatchGenerators,
    Objective,
    TrainingArguments,
    TrainingLoop,
    build_accelerator,
    per_process_batch_size,
    training_facts,
)
from .recipe import parse_args as parse_recipe_args

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PretrainMGCAArguments(TrainingArguments):
    """Recipe settings (paper values in `mgca_paper.yaml`, CPU values in `mgca_tiny.yaml`)."""

    model_preset: str = field(default="paper", metadata={"help": "MGCAConfig preset (paper | official | tiny | ...)."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from a saved MGCAModel folder."})
    model_overrides: dict = field(default_factory=dict, metadata={"help": "MGCAConfig fields set over the preset."})
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained BERT whose first layers initialise the text encoder (official: Bio_ClinicalBERT)."}
    )
    text_num_hidden_layers: int | None = field(default=None, metadata={"help": "Text layers kept (default: the preset's)."})
    vision_checkpoint: str | None = field(
        default=None, metadata={"help": "ImageNet weights for the new image encoder, a local file timm reads (official: "
                                        "DeiT-B for the ViT, torchvision's ResNet-50)."}
    )
    freeze_word_embeddings: bool = field(default=False, metadata={"help": "Keep the text word embeddings fixed."})
    tokenizer_name_or_path: str = field(default="emilyalsentzer/Bio_ClinicalBERT", metadata={"help": "Fast BERT tokenizer."})
    clean_text: bool = field(default=True, metadata={"help": "Official caption cleaning (lower-case \\w+ tokens)."})
    max_length: int = 112
    image_size: int = 224
    augmentation: str = field(default="none", metadata={
        "help": "official: letterbox to letterbox_size + random image_size crop (paper yaml) | none: shortest edge to "
                "image_size + centre crop."})
    letterbox_size: int = field(default=256, metadata={"help": "Side of the official augmentation's letterbox (256)."})
    image_minmax_rescale: bool = field(
        default=True, metadata={"help": "Per-image min-max rescale in the image processor (the official code has none: "
                                        "8-bit images / 255)."}
    )
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    warmup_ratio: float = field(default=0.4, metadata={"help": "Warm-up share of the steps (official 0.4); 0 uses warmup_steps."})
    reports_root: str | None = field(default=None, metadata={"help": "MIMIC-CXR report .txt files (dataset mimic-cxr)."})
    phantom_num_images: int = 512
    phantom_image_size: int = 64
    batch_size: int = 144
    learning_rate: float = 2e-5
    weight_decay: float = 0.05
    num_epochs: int = 50

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (contrastive negatives).")
        if self.vision_checkpoint is not None and self.model_name_or_path is not None:
            raise ValueError("vision_checkpoint initialises a new image encoder; model_name_or_path already has one.")
        if self.augmentation not in ("official", "none"):
            raise ValueError(f"augmentation must be 'official' or 'none', got {self.augmentation!r}.")
        if self.augmentation == "official" and self.letterbox_size < self.image_size:
            raise ValueError(
                f"letterbox_size ({self.letterbox_size}) must be >= image_size ({self.image_size}): the crops are cut "
                "from the letterboxed square."
            )


def parse_args(argv: list[str] | None = None) -> PretrainMGCAArguments:
    return parse_recipe_args(PretrainMGCAArguments, argv)


def mgca_caption(report: str) -> str:
    """IMPRESSION + " " + FINDINGS (official order), or the last paragraph when neither section is found."""
    sections = extract_sections(report)
    joined = " ".join(part for part in (sections["impression"], sections["findings"]) if part)
    return joined or sections["last_paragraph"]


def pretrained_text_encoder(path: str, num_hidden_layers: int | None) -> BertModel:
    """The first `num_hidden_layers` layers of a pretrained BERT (the official model keeps 6 of Bio_ClinicalBERT's
    12); the unused layers and the pooler are not loaded."""
    overrides = {} if num_hidden_layers is None else {"num_hidden_layers": num_hidden_layers}
    return BertModel.from_pretrained(path, add_pooling_layer=False, **overrides)


def build_model_and_processor(args: PretrainMGCAArguments) -> tuple[MGCAModel, MGCAProcessor]:
    if args.model_name_or_path is not None:
        model = MGCAModel.from_pretrained(resolve_path(args.model_name_or_path), **args.model_overrides)
    else:
        overrides = dict(args.model_overrides)
        text = None
        if args.text_model_name_or_path is not None:
            layers = args.text_num_hidden_layers or MGCAConfig.from_preset(args.model_preset).text_config.num_hidden_layers
            text = pretrained_text_encoder(resolve_path(args.text_model_name_or_path), layers)
            overrides["text_config"] = text.config.to_dict()
        config = MGCAConfig.from_preset(args.model_preset, image_size=args.image_size, **overrides)
        model = MGCAModel(config)
        if args.vision_checkpoint is not None:
            model.load_vision_checkpoint(args.vision_checkpoint)
        if text is not None:
            state = text.state_dict()
            if not model.config.text_token_type_embeddings:  # official: BLIP's BERT has no token types
                state["embeddings.token_type_embeddings.weight"] = torch.zeros_like(state["embeddings.token_type_embeddings.weight"])
            model.text_model.load_state_dict(state, strict=True)
    if args.freeze_word_embeddings:
        model.text_model.embeddings.word_embeddings.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(args.tokenizer_name_or_path))
    processor = MGCAProcessor(
        build_image_processor(args), tokenizer, clean_text=args.clean_text, max_length=args.max_length
    )
    return model, processor


def build_image_processor(args: PretrainMGCAArguments) -> CXRImageProcessor:
    """The image processor saved with the model (evaluation): the centre `image_size` crop of a shortest-edge resize,
    or with the official augmentation of the `letterbox_size` letterbox (official validation: `resize_img(256)` then
    `CenterCrop(224)`). Training calls it with `do_center_crop=False` and crops at random instead."""
    common = {"crop_size": args.image_size, "image_mean": args.image_mean, "image_std": args.image_std,
              "do_minmax_rescale": args.image_minmax_rescale}
    if args.augmentation == "official":
        return CXRImageProcessor(size={"longest_edge": args.letterbox_size}, do_pad=True, pad_size=args.letterbox_size,
                                 **common)
    return CXRImageProcessor(size=args.image_size, **common)


def load_pairs(args: PretrainMGCAArguments):
    """DatasetDict with `image` and `report` columns from the loader registry (any loader with reports)."""
    if args.dataset == "phantom":
        kwargs = {"num_images": args.phantom_num_images, "image_size": args.phantom_image_size, "seed": args.seed}
    else:
        kwargs = {"reports_root": args.reports_root} if args.reports_root is not None else {}
    data = load_dataset_by_name(args.dataset, LoaderOptions(root=args.data_root, splits=("train",), kwargs=kwargs))
    if "report" not in data["train"].column_names:
        raise ValueError(f"dataset {args.dataset!r} has no 'report' column; MGCA pre-training needs image-report pairs.")
    return data


class ImageReportCollator:
    """Rows -> `MGCAProcessor` inputs (pixel_values, input_ids, attention_mask, word_ids).

    With `train_crop` (the official augmentation), images go through the processor's image processor without its
    centre crop (the letterboxed square) and `train_crop` cuts each at a random offset drawn from
    `generators["torch"]` (one generator per process, checkpointed by the loop, so a resumed run draws the same
    crops). Without it, the processor's own pipeline is used as is.
    """

    def __init__(self, processor: MGCAProcessor, train_crop: RandomCrop | None = None,
                 generators: BatchGenerators | None = None):
        if (train_crop is None) != (generators is None):
            raise ValueError("ImageReportCollator needs both train_crop and generators, or neither.")
        self.processor, self.train_crop, self.generators = processor, train_crop, generators

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        texts = [mgca_caption(row["report"]) for row in rows]
        images = [row["image"] for row in rows]
        if self.train_crop is None:
            return dict(self.processor(images=images, text=texts))
        self.generators.before_batch()
        batch = dict(self.processor(text=texts))
        letterboxed = self.processor.image_processor(images, do_center_crop=False, return_tensors="pt")["pixel_values"]
        batch["pixel_values"] = self.train_crop(letterboxed, self.generators["torch"])
        return batch


def unwrap(model) -> MGCAModel:
    return model.module if hasattr(model, "module") else model


class MGCAObjective(Objective):
    """The model's three terms, weighted by Eq. 10's lambdas; CPA from `cpa_start_epoch`; prototype gradients set
    to zero during the first `freeze_prototypes_epochs` epochs (official `on_after_backward` drops them; with
    AdamW a zero gradient leaves the prototypes unchanged apart from weight decay, whose scaling the official
    per-forward re-normalisation undoes)."""

    def __init__(self, config: MGCAConfig):
        self.config = config
        self.epoch = 0

    def on_train_start(self, loop) -> None:
        unwrap(loop.model).prototype_layer.weight.register_hook(
            lambda grad: torch.zeros_like(grad) if self.epoch < self.config.freeze_prototypes_epochs else grad
        )

    def on_epoch_start(self, loop, epoch: int) -> None:
        self.epoch = epoch

    def compute_loss(self, model, batch) -> dict[str, torch.Tensor]:
        output = model(**batch, return_loss=True)
        config = self.config
        terms = {"ita": config.lambda_ita * output.ita_loss, "cta": config.lambda_cta * output.cta_loss}
        # the CPA term is computed anyway so every parameter gets a gradient (DDP); before its start it weighs 0
        terms["cpa"] = (config.lambda_cpa if self.epoch >= config.cpa_start_epoch else 0.0) * output.cpa_loss
        return terms

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]


def train(args: PretrainMGCAArguments) -> dict:
    """Run the recipe; returns the loop summary plus the exported folder (`output_dir/model`)."""
    accelerator = build_accelerator(args)
    set_seed(args.seed)  # before building the model, so the seed also fixes new weights
    local_batch = per_process_batch_size(args, accelerator)
    model, processor = build_model_and_processor(args)
    with accelerator.main_process_first():
        data = load_pairs(args)
    train_split = data["train"].select_columns(["image", "report"])
    if len(train_split) < args.batch_size:
        raise ValueError(f"The training split has {len(train_split)} rows, fewer than batch_size {args.batch_size}.")
    train_crop = generators = None
    if args.augmentation == "official":  # one crop generator per process; the loop checkpoints it
        train_crop = RandomCrop(args.image_size)
        generators = BatchGenerators(torch=torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index))
    loader = torch.utils.data.DataLoader(
        train_split, batch_size=local_batch, shuffle=True, drop_last=True,
        collate_fn=ImageReportCollator(processor, train_crop, generators),
    )
    # official: AdamW with weight decay on every parameter (BatchNorm, biases and prototypes included)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    total_steps = args.max_steps or args.num_epochs * (len(train_split) // args.batch_size)
    warmup = int(args.warmup_ratio * total_steps) if args.warmup_ratio > 0 else args.warmup_steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    objective = MGCAObjective(model.config)
    loop = TrainingLoop(accelerator, args, model, optimizer, loader, objective, scheduler, generators=generators)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "pretrain_mgca_args.json").write_text(json.dumps(asdict(args), indent=2))
    logger.info(
        "***** Running training ***** %d pairs, %d steps, global batch %d (%d per process), warm-up %d, preset %s",
        len(train_split), loop.total_steps, args.batch_size, local_batch, warmup, args.model_preset,
    )
    summary = loop.run()
    accelerator.wait_for_everyone()
    export = output_dir / "model"
    if accelerator.is_main_process:
        accelerator.unwrap_model(loop.model).save_pretrained(export, save_function=accelerator.save)
        processor.save_pretrained(export)
        results = {"dataset": str(args.dataset), "num_pairs": len(train_split), "global_batch_size": args.batch_size,
                   "model_preset": args.model_preset, **training_facts(summary)}  # pretraining: no evaluation
        write_results_and_card(export, "mgca", results, base_model=args.model_name_or_path,
                               training_data=f"{args.dataset}: {len(train_split):,} image-report pairs, "
                                             f"{summary['step']:,} steps.")
        logger.info("Exported %s", export)
    summary["model_dir"] = str(export)
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(parse_args(argv))


if __name__ == "__main__":
    main()

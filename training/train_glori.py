"""Train GLoRI (or the linear probe) on a frozen CheXFound backbone: the paper's downstream protocol.

    accelerate launch -m cxrfm.training.train_glori --config training/configs/glori_paper.yaml --dataset DIR
    python -m cxrfm.training.train_glori --config training/configs/glori_tiny.yaml --output_dir runs/tiny

Protocol (paper §IV-B2; official `eval/classification/linear_glori.py`, reference/chexfound_dinov2.md §3):
1. stage 1 ("selection"): one head per learning rate of the grid, all trained at once on TRAIN (one AdamW param
   group each, the summed loss, cosine schedule without warm-up), then the head with the best macro AUROC on
   VALIDATION is chosen;
2. stage 2 ("retrain", `retrain_on_train_val`): that head, warm-started from its stage-1 weights (as the official
   stage 2 does), is trained again on TRAIN + VALIDATION with a fresh optimizer and schedule;
3. validation (stage-1 head) and test (final head) metrics with bootstrap CIs go to `results.json`; backbone + head
   + image processor (+ the `cxr-classification` pipeline code) are saved to `<output_dir>/model`, with the same
   `results.json` and its model card (`README.md`, `cxrfm.model_cards`).

Feature modes. `augment` is the official protocol and what the paper's numbers need: each training image is
random-resized-cropped (scale 0.75-1) and flipped, min-max rescaled and normalised, and the frozen backbone
recomputes its features every step. `cached` computes evaluation-transform features once into an on-disk cache
(`feature_cache.py`) and trains heads from it: no augmentation, orders of magnitude faster, a deviation to report.
Validation and test features are cached in both modes (they are never augmented).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from datasets import DatasetDict, Image, load_from_disk
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup

from cxrfm.evaluation import format_table, multilabel_metrics
from cxrfm.hub import resolve_model_path
from cxrfm.model_cards import write_results_and_card
from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.modeling.chexfound.configuration_chexfound import CHEXFOUND_PRESETS
from cxrfm.modeling.chexfound.modeling_glori import GLoRIForMultiLabel, masked_multilabel_bce_loss
from cxrfm.pipelines import save_classification_pipeline
from cxrfm.processing.augment_cxr import sample_resized_crop
from cxrfm.processing.datasets import LoaderOptions, get_label_names, load_dataset_by_name
from cxrfm.processing.image_processing_cxr import CXRImageProcessor, load_cxr_image, resize_grey
from cxrfm.training.feature_cache import build_feature_cache, feature_cache_key
from cxrfm.training.recipe import Objective, TrainingArguments, TrainingLoop, build_accelerator
from cxrfm.training.recipe import parse_args as parse_recipe_args

logger = logging.getLogger(__name__)

# The paper's search grid (arXiv 2502.05142 §IV-B2) is the default. The official linear_glori.py default adds
# 1e-2, 2e-2, 5e-2 and 0.1 (13 rates); pass OFFICIAL_LEARNING_RATES to reproduce the code instead.
PAPER_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
OFFICIAL_LEARNING_RATES = PAPER_LEARNING_RATES + (1e-2, 2e-2, 5e-2, 0.1)
_HEAD_FIELDS = ("n_last_blocks", "decoder_dim", "num_heads", "ffn_dim", "dropout", "cat_cls", "linear_avgpool")


@dataclass(kw_only=True)
class ModelArguments:
    backbone: str = field(default="chexfound-vit-large-patch16-512", metadata={
        "help": "folder or Hub id of a saved CheXFoundModel, or a CheXFound preset name (random weights)"})
    image_processor: str | None = field(default=None, metadata={
        "help": "folder of a saved CXRImageProcessor; default: CheXFound's eval transform at the backbone image_size"})
    head: str = field(default="glori", metadata={"help": "glori or linear"})
    n_last_blocks: int | None = field(default=None, metadata={"help": "None keeps the GLoRIConfig default (4)"})
    decoder_dim: int | None = None
    num_heads: int | None = None
    ffn_dim: int | None = None
    dropout: float | None = None
    cat_cls: bool | None = None
    linear_avgpool: bool | None = None


@dataclass(kw_only=True)
class DataArguments:
    phantom_num_images: int = 512
    phantom_image_size: int = 64
    phantom_seed: int = 0
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"
    label_names: list[str] | None = field(default=None, metadata={"help": "findings to train (default: all)"})
    label_fraction: float = field(default=1.0, metadata={
        "help": "fraction of labelled TRAIN and VALIDATION images used (label efficiency: 0.01, 0.1, 1.0)"})
    label_fraction_seed: int = 0


@dataclass(kw_only=True)
class GLoRIArguments(TrainingArguments, ModelArguments, DataArguments):
    """All settings of the recipe: the shared `TrainingArguments` (`num_epochs` = stage-2 epochs, `batch_size`
    global, `checkpointing_steps`, `resume`, `dataset` = 'phantom', a loader name, a CSV or a save_to_disk
    DatasetDict folder, `data_root`), the model, the data and the protocol fields below."""

    renamed_fields = {"epochs": "num_epochs", "checkpoint_every_epochs": "checkpointing_steps"}  # (not a field)

    feature_mode: str = field(default="augment", metadata={"help": "augment (official) or cached (fast)"})
    cache_dir: str | None = field(default=None, metadata={"help": "feature caches (default <output_dir>/feature_cache)"})
    cache_dtype: str = "float16"
    learning_rates: list[float] = field(default_factory=lambda: list(PAPER_LEARNING_RATES))
    num_epochs: int = field(default=10, metadata={"help": "paper: 10 (CXR-LT, CheXpert, PLCO), 100 (small sets)"})
    selection_epochs: int | None = field(default=None, metadata={"help": "stage-1 epochs (default: num_epochs)"})
    retrain_on_train_val: bool = True
    batch_size: int = field(default=256, metadata={"help": "global batch size (paper: 256; 16 for tiny sets)"})
    eval_batch_size: int = 32
    extract_batch_size: int = 32
    weight_decay: float = 1e-4
    crop_scale_min: float = 0.75
    n_bootstrap: int = 1000
    checkpointing_steps: int | None = field(default=100, metadata={"help": "save_state every N steps of a stage"})
    num_workers: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.feature_mode not in ("augment", "cached"):
            raise ValueError(f"feature_mode must be 'augment' or 'cached', got {self.feature_mode!r}.")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"learning_rates must be positive and non-empty, got {self.learning_rates}.")
        if self.selection_epochs is not None and self.selection_epochs < 1:
            raise ValueError("selection_epochs must be >= 1.")


def parse_args(argv: list[str] | None = None) -> GLoRIArguments:
    """`--config FILE.yaml` then `--key value` overrides (`cxrfm.training.recipe.parse_args`): unknown keys, wrong
    types and a missing output_dir are errors."""
    return parse_recipe_args(GLoRIArguments, argv)


# ---------------------------------------------------------------------------------------------------- data


def load_splits(args: GLoRIArguments) -> DatasetDict:
    """The train / validation (/ test) splits with undecoded images: a save_to_disk DatasetDict folder, the phantom
    set, or a collection of the loader registry by name (or a CSV file) read from `data_root`."""
    if Path(args.dataset).is_dir():
        splits = load_from_disk(args.dataset)
    elif args.dataset == "phantom":
        kwargs = {"num_images": args.phantom_num_images, "image_size": args.phantom_image_size,
                  "seed": args.phantom_seed, "with_masks": False}
        splits = load_dataset_by_name("phantom", LoaderOptions(kwargs=kwargs))
    else:
        splits = load_dataset_by_name(args.dataset, LoaderOptions(root=args.data_root))
    needed = [args.train_split, args.validation_split] + ([args.test_split] if args.test_split else [])
    missing = [name for name in needed if name not in splits]
    if missing:
        raise ValueError(f"dataset {args.dataset}: missing splits {missing}; it has {list(splits)}.")
    # Undecoded sources: the image processor reads paths/bytes itself (DICOM, 16-bit PNG at full precision).
    return DatasetDict({name: splits[name].select_columns(["image", "labels", "positive_labels"])
                        .cast_column("image", Image(decode=False)) for name in needed})


class ImageSources(Dataset):
    """Row -> the undecoded image dict {"bytes", "path"} (what `CXRImageProcessor` and `load_cxr_image` read), so
    that a file that fails to decode is named by its path in the error, not only by its size in bytes."""

    def __init__(self, split):
        self.split = split.select_columns(["image"])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image = self.split[int(index)]["image"]
        return {"bytes": image["bytes"], "path": image["path"]}


class GLoRITrainTransform:
    """The official train transform: RandomResizedCrop(S, scale=(0.75, 1), bicubic) -> horizontal flip (p = 0.5) ->
    per-image min-max rescale -> normalise (the last two by the image processor)."""

    def __init__(self, image_processor: CXRImageProcessor, scale_min: float = 0.75):
        self.image_processor = image_processor
        self.size = (image_processor.crop_size["height"], image_processor.crop_size["width"])
        self.scale, self.ratio = (scale_min, 1.0), (3 / 4, 4 / 3)

    def __call__(self, source, generator: torch.Generator) -> torch.Tensor:
        # load_cxr_image appends the dict's "(path ...)", so a corrupt file is named in the error.
        image = torch.from_numpy(load_cxr_image(source, name="train image"))[None, None]
        top, left, height, width = sample_resized_crop(*image.shape[-2:], self.scale, self.ratio, generator)
        image = resize_grey(image[..., top : top + height, left : left + width], self.size, self.image_processor.resample)
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        return self.image_processor(image[0, 0].numpy(), do_resize=False, do_center_crop=False,
                                    return_tensors="pt")["pixel_values"][0]


class Rows(Dataset):
    """Selected rows of a split as training items: `(patch_tokens, cls_tokens, labels)` from a feature cache, or
    `(pixel_values, labels)` through the random train transform (seeded by seed, epoch and row)."""

    def __init__(self, rows: np.ndarray, labels: torch.Tensor, features=None, sources=None, transform=None, seed=0):
        self.rows, self.labels, self.features, self.sources, self.transform = rows, labels, features, sources, transform
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = int(self.rows[index])
        if self.features is not None:
            return (*self.features[row], self.labels[row])
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, row)) % (2**63))
        return self.transform(self.sources[row], generator), self.labels[row]


def labelled_subset(num_rows: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random `fraction` of the rows (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}.")
    keep = max(1, math.ceil(fraction * num_rows))
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:keep])


# ---------------------------------------------------------------------------------------------------- heads


class HeadGrid(nn.Module):
    """Several heads on the same features (one per learning rate); forward returns logits `(H, B, C)`."""

    def __init__(self, heads: dict[str, nn.Module]):
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, patch_tokens: torch.Tensor, cls_tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(patch_tokens, cls_tokens)[0] for head in self.heads.values()])


def rate_name(learning_rate: float) -> str:
    return f"lr_{learning_rate:g}".replace(".", "_")


def head_inputs(model: GLoRIForMultiLabel, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(patch_tokens, cls_tokens, labels)` of a batch; image batches go through the frozen backbone first."""
    if len(batch) == 3:
        patch_tokens, cls_tokens, labels = batch
    else:
        pixel_values, labels = batch
        with torch.no_grad():
            patch_tokens, cls_tokens = model.extract_backbone_features(pixel_values)
    head_dtype = next(model.head.parameters()).dtype
    return patch_tokens.to(head_dtype), cls_tokens.to(head_dtype), labels


class HeadGridObjective(Objective):
    """Masked BCE of every head of the grid (summed over heads) on frozen-backbone features. The epoch is handed to
    the training rows, whose random crops are seeded by (seed, epoch, row), and kept in checkpoints so a resumed
    epoch crops as the uninterrupted one did."""

    def __init__(self, model: GLoRIForMultiLabel, dataset):
        self.model, self.epoch = model, 0
        self.parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]

    def _set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for part in self.parts:
            part.epoch = epoch

    def on_train_start(self, loop) -> None:
        self.model.backbone.eval()

    def on_epoch_start(self, loop, epoch: int) -> None:
        self._set_epoch(epoch)

    def compute_loss(self, grid, batch) -> dict[str, torch.Tensor]:
        patch_tokens, cls_tokens, labels = head_inputs(self.model, batch)
        logits = grid(patch_tokens, cls_tokens)
        return {"bce": masked_multilabel_bce_loss(logits.float(), labels.expand_as(logits).to(logits.device))}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self._set_epoch(state["epoch"])


def train_heads(args: GLoRIArguments, model, grid: HeadGrid, learning_rates, dataset, epochs: int,
                stage_dir: Path) -> tuple[TrainingLoop, dict]:
    """AdamW (one param group per head) + cosine to 0 over all steps, through the recipe loop: `save_state` every
    `checkpointing_steps` into `stage_dir/checkpoints/checkpoint_<i>`, resumed exactly from the latest. Returns the
    finished loop (its prepared grid predicts on every process) and its summary."""
    stage_args = dataclasses.replace(args, num_epochs=epochs)
    # The loop trains a copy: ZeRO-3 partitions the modules it prepares in place (empty parameter placeholders), and
    # `grid` must stay whole to receive the trained weights (`trained_grid`) and warm-start stage 2.
    grid = copy.deepcopy(grid)
    accelerator = build_accelerator(stage_args, project_dir=str(stage_dir))  # one checkpoint folder per stage
    loader = DataLoader(dataset, batch_size=args.batch_size // accelerator.num_processes, shuffle=True,
                        num_workers=args.num_workers)
    groups = [{"params": head.parameters(), "lr": lr} for head, lr in zip(grid.heads.values(), learning_rates)]
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    steps = args.max_steps or epochs * math.ceil(len(dataset) / args.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, steps)
    loop = TrainingLoop(accelerator, stage_args, grid, optimizer, loader, HeadGridObjective(model, dataset), scheduler)
    logger.info("%s: %d examples, %d heads, %d epochs, global batch %d, %d steps", stage_dir.name, len(dataset),
                len(learning_rates), epochs, args.batch_size, loop.total_steps)
    return loop, loop.run()


def predict(loop: TrainingLoop, model: GLoRIForMultiLabel, dataset, batch_size: int) -> np.ndarray:
    """Sigmoid scores `(H, N, C)` of every head of the loop's prepared grid on `dataset`, computed on every process
    and gathered with `gather_for_metrics`."""
    def forward(grid, batch):
        patch_tokens, cls_tokens, _ = head_inputs(model, batch)
        return torch.sigmoid(grid(patch_tokens, cls_tokens).float()).transpose(0, 1).contiguous()  # (B, H, C)

    return loop.predict(DataLoader(dataset, batch_size=batch_size), forward).transpose(0, 1).numpy()


def trained_grid(loop: TrainingLoop, grid: HeadGrid) -> HeadGrid:
    """`grid` (the module given to `train_heads`, whose loop trained a copy) holding the trained weights, gathered
    from the prepared one (a collective: sharded under ZeRO-3)."""
    accelerator = loop.accelerator
    state = accelerator.get_state_dict(loop.model, unwrap=True)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed and accelerator.deepspeed_config["zero_optimization"]["stage"] == 3:
        # ZeRO-3 consolidates the shards on the main process only; every process needs them (stage 2 warm-starts
        # from this grid on each process).
        [state] = broadcast_object_list([state], from_process=0)
    grid.load_state_dict(state)
    return grid


# ---------------------------------------------------------------------------------------------------- main


def build_model(model_args: ModelArguments, label_names: list[str]) -> tuple[GLoRIForMultiLabel, CXRImageProcessor]:
    if model_args.backbone in CHEXFOUND_PRESETS:
        backbone = CheXFoundModel(CheXFoundConfig.from_preset(model_args.backbone))
        logger.warning("Backbone preset %r has RANDOM weights (tests/demos only).", model_args.backbone)
    else:
        # A missing folder is named as such (and the presets listed), not reported as a malformed Hub repo id.
        try:
            path = resolve_model_path(model_args.backbone, "backbone")
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} Or use a preset name: {sorted(CHEXFOUND_PRESETS)}.") from None
        backbone = CheXFoundModel.from_pretrained(path)
    head_kwargs = {name: getattr(model_args, name) for name in _HEAD_FIELDS if getattr(model_args, name) is not None}
    model = GLoRIForMultiLabel.from_backbone(backbone, head=model_args.head, id2label=dict(enumerate(label_names)),
                                             **head_kwargs)
    model.backbone.requires_grad_(False)
    model.eval()
    if model_args.image_processor:
        processor = CXRImageProcessor.from_pretrained(model_args.image_processor)
    else:
        side = backbone.config.image_size
        processor = CXRImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return model, processor


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = build_accelerator(args)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file otherwise
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = asdict(args)
    logger.info("Resolved configuration:\n%s", yaml.safe_dump(resolved, sort_keys=False))
    if accelerator.is_main_process:
        (output_dir / "train_glori_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    set_seed(args.seed)
    started = time.perf_counter()

    splits = load_splits(args)
    all_names = get_label_names(splits[args.train_split])
    names = list(args.label_names or all_names)
    unknown = sorted(set(names) - set(all_names))
    if unknown:
        raise ValueError(f"label_names {unknown} are not in the dataset; it has {all_names}.")
    columns = [all_names.index(name) for name in names]
    labels = {split: torch.from_numpy(splits[split].with_format("numpy")[:]["labels"][:, columns].astype(np.float32))
              for split in splits}
    model, processor = build_model(args, names)
    model.to(accelerator.device)

    # Features: evaluation-transform caches (all splits in cached mode; validation/test always).
    device = accelerator.device
    cache_root = Path(args.cache_dir) if args.cache_dir else output_dir / "feature_cache"
    cached, cache_info = {}, {}
    for split in splits:
        if split == args.train_split and args.feature_mode == "augment":
            continue
        key = feature_cache_key(model.backbone, model.config.n_last_blocks, processor, splits[split]._fingerprint,
                                args.cache_dtype)
        cached[split], reused = build_feature_cache(
            cache_root / key, ImageSources(splits[split]),
            lambda sources: processor(sources, return_tensors="pt")["pixel_values"],
            lambda pixels: model.extract_backbone_features(pixels.to(device)),
            args.extract_batch_size, args.cache_dtype, process_index=accelerator.process_index,
            num_processes=accelerator.num_processes, wait_for_everyone=accelerator.wait_for_everyone,
            show_progress=accelerator.is_local_main_process,
        )
        cache_info[split] = {"key": key, "reused": reused}
    transform = GLoRITrainTransform(processor, args.crop_scale_min)

    def rows(split: str, fraction: float) -> Rows:
        selected = labelled_subset(len(splits[split]), fraction, args.label_fraction_seed)
        if args.feature_mode == "cached":
            return Rows(selected, labels[split], features=cached[split])
        return Rows(selected, labels[split], sources=ImageSources(splits[split]), transform=transform, seed=args.seed)

    train_split, val_split, test_split = args.train_split, args.validation_split, args.test_split
    train_rows = rows(train_split, args.label_fraction)
    val_rows = rows(val_split, args.label_fraction)
    # Selection sees the same labelled validation subset that stage 2 trains on.
    val_eval = Rows(val_rows.rows, labels[val_split], features=cached[val_split])

    # Stage 1: the whole grid on TRAIN, selected on VALIDATION.
    grid = HeadGrid({rate_name(lr): model.new_head() for lr in args.learning_rates})
    loop, summary = train_heads(args, model, grid, args.learning_rates, train_rows,
                                args.selection_epochs or args.num_epochs, output_dir / "stage1")
    history = {"stage1": summary["history"]}
    val_scores = predict(loop, model, val_eval, args.eval_batch_size)
    grid = trained_grid(loop, grid)
    val_labels = labels[val_split][val_rows.rows].numpy()
    per_rate = {}
    for name, scores in zip(grid.heads, val_scores):
        macro = multilabel_metrics(val_labels, scores, names, n_bootstrap=0)["macro"]["auroc"]
        per_rate[name] = macro
    best_index = int(np.argmax([-np.inf if value is None else value for value in per_rate.values()]))
    best_rate, best_name = args.learning_rates[best_index], list(grid.heads)[best_index]
    logger.info("Validation macro AUROC per learning rate: %s -> best %s", per_rate, best_name)
    validation_metrics = multilabel_metrics(val_labels, val_scores[best_index], names, args.n_bootstrap, args.seed)
    final_loop, final_grid, final_index = loop, grid, best_index

    # Stage 2: the best head, warm-started, on TRAIN + VALIDATION.
    if args.retrain_on_train_val:
        final_grid, final_index = HeadGrid({best_name: copy.deepcopy(grid.heads[best_name])}), 0
        final_loop, summary = train_heads(args, model, final_grid, [best_rate], ConcatDataset([train_rows, val_rows]),
                                          args.num_epochs, output_dir / "stage2")
        history["stage2"] = summary["history"]
    results = {
        "label_names": names, "feature_mode": args.feature_mode, "label_fraction": args.label_fraction,
        "num_train_images": len(train_rows), "num_validation_images": len(val_rows),
        "selection": {"metric": "validation macro AUROC", "per_learning_rate": per_rate, "best_learning_rate": best_rate},
        "validation": validation_metrics, "feature_cache": cache_info,
    }
    if test_split:
        test_rows = Rows(np.arange(len(splits[test_split])), labels[test_split], features=cached[test_split])
        test_scores = predict(final_loop, model, test_rows, args.eval_batch_size)[final_index]
        results["test"] = multilabel_metrics(labels[test_split].numpy(), test_scores, names, args.n_bootstrap, args.seed)
    model.head = trained_grid(final_loop, final_grid).heads[best_name].to(accelerator.device)
    results["seconds"] = round(time.perf_counter() - started, 2)
    if accelerator.is_main_process:
        (output_dir / "results.json").write_text(json.dumps(results, indent=1, default=list))
        save_classification_pipeline(model, processor, output_dir / "model")
        # The published folder carries its own results and card (issue 10), evaluated on args.dataset.
        base_model = None if args.backbone in CHEXFOUND_PRESETS else args.backbone
        write_results_and_card(output_dir / "model", "glori", {**results, "dataset": str(args.dataset)},
                               training_data=f"{args.dataset} ({train_split} + {val_split} splits, label fraction "
                                             f"{args.label_fraction}); frozen backbone {args.backbone}.",
                               base_model=base_model)
        table = results.get("test", validation_metrics)
        accelerator.print("\n".join(format_table(table)))
    accelerator.end_training()
    return {**results, "history": history}


if __name__ == "__main__":
    main()

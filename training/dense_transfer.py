"""Data, label-fraction sampling, feature caching and bootstrap statistics shared by the dense-transfer recipes.

The protocol (MGCA paper §4, Tables 2-3): a frozen pretrained encoder, a trainable decoder (U-Net) or detector
head, 1% / 10% / 100% of the training images (`train_fraction`, a fixed-seed subset), metrics on the test split.

Rows come from any loader with `masks` / `boxes` / `box_labels` (`with_masks=True`: SIIM, RSNA, Object-CXR, the
phantom set). `target_labels` picks the finding classes; a row's mask channel k is the union of its masks of class
k, and a class given only as boxes (RSNA pneumonia) is filled box by box, as the paper turns RSNA's boxes into
segmentation masks. Images are decoded at full precision (DICOM, 16-bit PNG), resized to a square
`image_size` together with their targets, optionally augmented (`processing.augment_dense`), then min-max rescaled
per image and normalised with the encoder's mean/std, as `CXRImageProcessor` does.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from cxrfm.evaluation.metrics import bootstrap_indices, percentile_interval
from cxrfm.processing.augment_dense import DenseAugmentation, DenseSample, resize_sample
from cxrfm.processing.image_processing_cxr import load_cxr_image, minmax_rescale

from .dense_encoders import FrozenEncoder, load_frozen_encoder
from .recipe import Objective, TrainingArguments, build_accelerator, per_process_batch_size

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DenseTransferArguments(TrainingArguments):
    """Settings shared by the segmentation and detection protocols (the skeleton's fields, plus these)."""

    encoder: str = field(metadata={"help": "saved cxrfm folder (chexfound, mgca, relaxed_clip, dinov2) or timm name"})
    target_labels: list[str] = field(default_factory=lambda: ["Pneumothorax"], metadata={"help": "finding classes"})
    phantom_num_images: int = 256
    phantom_image_size: int = 64
    image_size: int = 224
    train_fraction: float = field(default=1.0, metadata={"help": "fraction of TRAIN used: 0.01, 0.1 or 1.0 (paper)"})
    fraction_seed: int = 0
    augment: bool = field(default=True, metadata={"help": "rotation/resized-crop/flip applied to image and targets"})
    n_bootstrap: int = 1000
    batch_size: int = 16
    num_epochs: int = 50
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}.")
        if not self.target_labels:
            raise ValueError("target_labels must name at least one finding.")


class DenseObjective(Objective):
    """Base objective of the dense protocols: tells the training set which epoch it is in (augmentations are drawn
    from (seed, epoch, item)) and checkpoints that epoch, so a resumed run replays the same augmentations."""

    def __init__(self, train_set):
        self.train_set = train_set

    def on_epoch_start(self, loop, epoch: int) -> None:
        self.train_set.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.train_set.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.train_set.set_epoch(state["epoch"])


@dataclass
class DenseRun:
    """What both protocols build before their model: the Accelerator, the frozen encoder and the data."""

    accelerator: object
    encoder: FrozenEncoder
    train_set: Dataset
    test_set: "DenseTransferDataset"
    train_loader: DataLoader
    test_loader: DataLoader


def prepare_dense_run(args: DenseTransferArguments, cache_features: bool = False) -> DenseRun:
    accelerator = build_accelerator(args)
    set_seed(args.seed)  # before the adapter/decoder/head are built, so the seed also fixes their initial weights
    with accelerator.main_process_first():
        splits, label_names = load_dense_splits(args.dataset, args.data_root, args.phantom_num_images,
                                                args.phantom_image_size, args.seed)
    encoder = load_frozen_encoder(args.encoder)
    indices = select_fraction(len(splits["train"]), args.train_fraction, args.fraction_seed)
    train_set = DenseTransferDataset(splits["train"], args.target_labels, label_names, args.image_size, encoder,
                                     indices=indices, augmentation=DenseAugmentation() if args.augment else None,
                                     seed=args.seed)
    test_set = DenseTransferDataset(splits["test"], args.target_labels, label_names, args.image_size, encoder,
                                    split_name="test")
    if cache_features:
        train_set = CachedFeaturesDataset(train_set, cache_encoder_features(encoder, train_set))
    local_batch = per_process_batch_size(args, accelerator)
    logger.info("***** Dense transfer: %d of %d train images (%.0f%%), %d test images, encoder %s (%s) *****",
                len(train_set), len(splits["train"]), 100 * args.train_fraction, len(test_set), args.encoder, encoder.kind)
    return DenseRun(
        accelerator, encoder, train_set, test_set,
        DataLoader(train_set, batch_size=local_batch, shuffle=True, collate_fn=collate_dense),
        DataLoader(test_set, batch_size=local_batch, collate_fn=collate_dense),
    )


def train_frozen_encoder_head(args: DenseTransferArguments, run: DenseRun, model, objective: Objective, evaluate,
                              protocol: str, untrained_key: str):
    """Train everything but the frozen encoder with AdamW on the skeleton's loop; `evaluate(loop, test_loader, args)`
    scores the test split before and after. Returns (loop, results)."""
    from .feature_cache import weights_fingerprint
    from .recipe import TrainingLoop

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    loop = TrainingLoop(run.accelerator, args, model, optimizer, run.train_loader, objective)
    untrained = evaluate(loop, run.test_loader, args)
    before = weights_fingerprint(run.encoder)
    summary = loop.run()
    results = {"protocol": protocol, "encoder": args.encoder, "encoder_kind": run.encoder.kind,
               "dataset": args.dataset, "train_fraction": args.train_fraction,
               "num_train_images": len(run.train_set), "test": evaluate(loop, run.test_loader, args),
               untrained_key: untrained, "history": summary["history"],
               # a frozen encoder's weights and BatchNorm statistics are bit-identical after training
               "encoder_fingerprint": {"before": before, "after": weights_fingerprint(run.encoder)}}
    return loop, results


def write_dense_results(args: DenseTransferArguments, accelerator, results: dict, table: str, head_state: dict,
                        head_file: str) -> None:
    """results.json, results.md and the trained (non-encoder) weights into output_dir (main process)."""
    if not accelerator.is_main_process:
        return
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps({**results, "arguments": asdict(args)}, indent=2))
    (output_dir / "results.md").write_text(table)
    torch.save(head_state, output_dir / head_file)


def load_dense_splits(dataset: str, data_root: str | None, phantom_num_images: int, phantom_image_size: int,
                      seed: int):
    """(DatasetDict with masks/boxes, label names) for a registered loader name (phantom, siim, rsna, object-cxr, or
    any loader that takes `with_masks`)."""
    from cxrfm.processing.datasets import LoaderOptions, get_label_names, load_dataset_by_name

    extra = {"with_masks": True}
    if dataset == "phantom":
        extra.update(num_images=phantom_num_images, image_size=phantom_image_size, seed=seed)
    elif data_root is None:
        raise ValueError(f"dataset {dataset!r} needs data_root (the collection's folder in its official layout).")
    splits = load_dataset_by_name(dataset, LoaderOptions(root=data_root), **extra)
    missing = [name for name in ("train", "test") if name not in splits]
    if missing:
        raise ValueError(f"dataset {dataset!r} has no {missing} split; dense transfer trains on train, tests on test.")
    return splits, get_label_names(splits["train"])


def select_fraction(num_rows: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a fixed-seed subset with round(fraction * num_rows) rows (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}.")
    count = max(1, round(fraction * num_rows))
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:count])


def _label_indices(label_names: Sequence[str], target_labels: Sequence[str], split_name: str) -> list[int]:
    missing = [name for name in target_labels if name not in label_names]
    if missing:
        raise ValueError(f"target_labels {missing} are not labels of the {split_name} split (labels: {list(label_names)}).")
    return [list(label_names).index(name) for name in target_labels]


def row_to_sample(row: dict, label_indices: Sequence[int], name: str) -> DenseSample:
    """One dataset row -> DenseSample at the image's own size (targets of the `label_indices` classes only)."""
    image = torch.from_numpy(np.asarray(load_cxr_image(row["image"], name=name), dtype=np.float32))[None]
    height, width = image.shape[-2:]
    position = {label: k for k, label in enumerate(label_indices)}
    masks = torch.zeros(len(label_indices), height, width, dtype=torch.uint8)
    boxes, box_labels = [], []
    row_masks = row.get("masks") or []
    for index, (box, label) in enumerate(zip(row.get("boxes") or [], row.get("box_labels") or [])):
        if label not in position:
            continue
        k = position[label]
        boxes.append(box)
        box_labels.append(k)
        if index < len(row_masks) and row_masks[index] is not None:
            mask = np.asarray(row_masks[index])
            if mask.shape != (height, width):
                raise ValueError(f"{name}: mask {index} is {mask.shape}, the image is {(height, width)}.")
            masks[k] |= torch.from_numpy(mask > 0)
        else:  # a box-only annotation becomes a filled rectangle
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            masks[k, max(y0, 0) : y1, max(x0, 0) : x1] = 1
    return DenseSample(
        image=image,
        masks=masks,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        box_labels=torch.tensor(box_labels, dtype=torch.int64),
    )


def normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float], name: str = "image") -> torch.Tensor:
    """(1, H, W) in [0, 1] -> (3, H, W): the image processor's per-image `minmax_rescale`, grey copied to 3 channels,
    (x - mean) / std."""
    scaled = minmax_rescale(image, name).expand(len(mean), -1, -1)
    return (scaled - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


class DenseTransferDataset(Dataset):
    """A split as (pixel_values (3, S, S), masks (K, S, S) float, boxes (M, 4), box_labels (M,)) items.

    With `augmentation`, each item draws its own parameters from a generator seeded by (seed, epoch, index), so a
    resumed run sees the same augmentations. Decoded and resized samples are kept in memory (`cache_decoded`):
    datasets of this protocol are small.
    """

    def __init__(self, split, target_labels: Sequence[str], label_names: Sequence[str], image_size: int,
                 encoder: FrozenEncoder, indices: Sequence[int] | None = None,
                 augmentation: DenseAugmentation | None = None, seed: int = 0, split_name: str = "train"):
        self.split, self.image_size, self.split_name = split, image_size, split_name
        self.label_indices = _label_indices(label_names, target_labels, split_name)
        self.indices = list(range(len(split))) if indices is None else [int(i) for i in indices]
        self.mean, self.std = encoder.image_mean, encoder.image_std
        self.augmentation, self.seed, self.epoch = augmentation, seed, 0
        self._decoded: dict[int, DenseSample] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sample(self, position: int) -> DenseSample:
        """The resized, not yet augmented sample at `position`."""
        row_index = self.indices[position]
        if row_index not in self._decoded:
            name = f"{self.split_name}[{row_index}]"
            self._decoded[row_index] = resize_sample(row_to_sample(self.split[row_index], self.label_indices, name),
                                                     self.image_size)
        return self._decoded[row_index]

    def __getitem__(self, position: int) -> dict:
        sample = self.sample(position)
        if self.augmentation is not None:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            sample = self.augmentation(sample, generator)
        return {
            "pixel_values": normalise(sample.image, self.mean, self.std, f"{self.split_name}[{self.indices[position]}]"),
            "masks": sample.masks.float(),
            "boxes": sample.boxes,
            "box_labels": sample.box_labels,
            "index": position,
        }


def collate_dense(items: list[dict]) -> dict:
    """Stack images, masks and cached encoder features (per level); boxes stay per-image lists (detectors take one
    target dict per image)."""
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "masks": torch.stack([item["masks"] for item in items]),
        "boxes": [item["boxes"] for item in items],
        "box_labels": [item["box_labels"] for item in items],
        "index": torch.tensor([item["index"] for item in items]),
    }
    if "encoder_features" in items[0]:
        levels = len(items[0]["encoder_features"])
        batch["encoder_features"] = [torch.stack([item["encoder_features"][level] for item in items]).float()
                                     for level in range(levels)]
    return batch


class CachedFeaturesDataset(Dataset):
    """`dataset`'s items with their frozen-encoder features attached (`cache_encoder_features`)."""

    def __init__(self, dataset: DenseTransferDataset, features: list[list[torch.Tensor]]):
        if len(features) != len(dataset):
            raise ValueError(f"{len(features)} cached feature sets for {len(dataset)} items.")
        self.dataset, self.features = dataset, features

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> dict:
        return {**self.dataset[position], "encoder_features": self.features[position]}


@torch.no_grad()
def cache_encoder_features(encoder: FrozenEncoder, dataset: DenseTransferDataset, batch_size: int = 16,
                           dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    """Frozen-encoder features of every item (no augmentation): per item, its list of feature maps. A decoder then
    trains for many epochs without re-running the encoder, which is exact because nothing random touches the
    encoder's input."""
    if dataset.augmentation is not None:
        raise ValueError("feature caching needs a dataset without augmentation: augmented inputs change every epoch.")
    cached: list[list[torch.Tensor]] = []
    for start in range(0, len(dataset), batch_size):
        batch = collate_dense([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        levels = encoder(batch["pixel_values"])
        cached.extend([[level[i].to(dtype) for level in levels] for i in range(len(batch["pixel_values"]))])
    return cached


def bootstrap_interval(statistic, num_items: int, n_bootstrap: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(indices)` over items resampled with replacement, with the resamples and
    interval rule of `multilabel_metrics` (NaN resamples, e.g. without any positive pixel, are skipped)."""
    if n_bootstrap <= 0:
        return math.nan, math.nan
    values = np.array([statistic(bootstrap_indices(num_items, seed, b)) for b in range(n_bootstrap)], dtype=np.float64)
    interval = percentile_interval(values, confidence)
    return interval if interval is not None else (math.nan, math.nan)


def format_results_table(title: str, rows: list[tuple[str, float, float, float]]) -> str:
    """Markdown table: name | value | 95% CI."""
    lines = [f"### {title}", "", "| | value | 95% CI |", "|---|---|---|"]
    lines += [f"| {name} | {value:.4f} | {low:.4f}-{high:.4f} |" for name, value, low, high in rows]
    return "\n".join(lines) + "\n"


__all__ = [
    "CachedFeaturesDataset",
    "DenseTransferDataset",
    "bootstrap_interval",
    "train_frozen_encoder_head",
    "cache_encoder_features",
    "collate_dense",
    "format_results_table",
    "normalise",
    "row_to_sample",
    "select_fraction",
]

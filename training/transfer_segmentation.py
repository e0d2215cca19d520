"""Semantic segmentation on a frozen cxrfm encoder: the MGCA paper's U-Net protocol (§4, Table 3), for any encoder.

    python -m cxrfm.training.transfer_segmentation --config training/configs/transfer_segmentation_tiny.yaml
    accelerate launch -m cxrfm.training.transfer_segmentation --encoder runs/mgca-resnet50 --dataset siim \
        --data_root /data/siim --target_labels Pneumothorax --train_fraction 0.01

A U-Net decoder from segmentation-models-pytorch (smp) over a frozen encoder (`training.dense_encoders`): the
MGCA ResNet-50 runs as smp's ResNet-50 encoder holding its weights; a ViT (CheXFound, MGCA ViT, relaxed-CLIP
tower) gives a four-level pyramid through a trainable adapter. Only the adapter, the decoder and the
segmentation head train (Dice or Dice + BCE). The test split's Dice per class is the global Dice over its pixels,
2|P∩G| / (|P| + |G|) with P = sigmoid(logit) > 0.5, and its 95% CI resamples test images with replacement.

Without augmentation (`augment: false`) the frozen encoder's features can be computed once (`cache_features`):
exact, since nothing random reaches the encoder, and much faster (benchmarks/bench_dense_cache.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .dense_encoders import FrozenEncoder, build_adapter
from .dense_transfer import (
    DenseObjective,
    DenseTransferArguments,
    bootstrap_interval,
    format_results_table,
    prepare_dense_run,
    train_frozen_encoder_head,
    write_dense_results,
)
from .recipe import TrainingLoop, parse_args

logger = logging.getLogger(__name__)


class FrozenEncoderUnet(nn.Module):
    """Frozen encoder -> trainable adapter -> smp `UnetDecoder` -> `SegmentationHead` (one logit map per class)."""

    def __init__(self, encoder: FrozenEncoder, num_classes: int, decoder_channels=(256, 128, 64, 32, 16),
                 pyramid_channels=(64, 128, 256, 256)):
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        self.encoder = encoder
        self.adapter = build_adapter(encoder, pyramid_channels)
        self.decoder = UnetDecoder(encoder_channels=self.adapter.out_channels, decoder_channels=decoder_channels,
                                   n_blocks=len(decoder_channels))
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)

    def forward(self, pixel_values: torch.Tensor, encoder_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K, H, W) logits; `encoder_features` (cached) skips the frozen encoder."""
        if encoder_features is None:
            encoder_features = self.encoder(pixel_values)
        return self.segmentation_head(self.decoder(self.adapter(pixel_values, encoder_features)))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss 1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps), per class over the batch, averaged."""
    probabilities = logits.sigmoid()
    dims = (0, 2, 3)
    intersection = (probabilities * targets).sum(dims)
    return (1 - (2 * intersection + eps) / (probabilities.sum(dims) + targets.sum(dims) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> dict[str, torch.Tensor]:
    """Named loss terms: `dice`, or `dice` + `bce` (equal weights)."""
    terms = {"dice_loss": dice_loss(logits, targets)}
    if loss == "dice_bce":
        terms["bce_loss"] = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return terms


def dice_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class: |P∩G| and |P| + |G| with P = logits > 0 (probability > 0.5). (B, K) each."""
    predicted = (logits > 0).float()
    return (predicted * targets).sum((2, 3)), predicted.sum((2, 3)) + targets.sum((2, 3))


def dice_from_counts(intersections: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Global Dice per class from per-image counts (N, K); NaN for a class with no predicted or true pixel."""
    total = totals.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * intersections.sum(0) / total, np.nan)


@dataclass(kw_only=True)
class SegmentationArguments(DenseTransferArguments):
    cache_features: bool = field(default=False, metadata={
        "help": "compute the frozen encoder's features once (needs augment: false)"})
    loss: str = field(default="dice_bce", metadata={"help": "dice | dice_bce"})
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in ("dice", "dice_bce"):
            raise ValueError(f"loss must be 'dice' or 'dice_bce', got {self.loss!r}.")
        if self.cache_features and self.augment:
            raise ValueError("cache_features needs augment: false (augmented inputs change the encoder features).")


class SegmentationObjective(DenseObjective):
    def __init__(self, train_set, loss: str):
        super().__init__(train_set)
        self.loss = loss

    def compute_loss(self, model, batch) -> dict[str, torch.Tensor]:
        logits = model(batch["pixel_values"], batch.get("encoder_features"))
        return segmentation_loss(logits, batch["masks"], self.loss)


def summarise_dice(intersections: np.ndarray, totals: np.ndarray, label_names: list[str], n_bootstrap: int,
                   seed: int) -> dict:
    """Global Dice per class and macro (mean over classes with pixels), each with an image-bootstrap 95% CI."""
    def macro(indices):
        return float(np.nanmean(dice_from_counts(intersections[indices], totals[indices])))

    per_class = dice_from_counts(intersections, totals)
    results = {"num_images": int(len(intersections)), "n_bootstrap": n_bootstrap, "per_class": {}}
    for k, name in enumerate(label_names):
        low, high = bootstrap_interval(lambda idx, k=k: dice_from_counts(intersections[idx], totals[idx])[k],
                                       len(intersections), n_bootstrap, seed)
        results["per_class"][name] = {"dice": float(per_class[k]), "ci": [low, high]}
    low, high = bootstrap_interval(macro, len(intersections), n_bootstrap, seed)
    results["macro"] = {"dice": float(np.nanmean(per_class)), "ci": [low, high]}
    return results


def evaluate_segmentation(loop: TrainingLoop, test_loader, args: SegmentationArguments) -> dict:
    """Dice on the test split, computed on every process (the prepared model) and gathered."""
    counts = loop.predict(test_loader, lambda model, batch: dict(zip(
        ("intersection", "total"), dice_counts(model(batch["pixel_values"]), batch["masks"]))))
    return summarise_dice(counts["intersection"].numpy(), counts["total"].numpy(), list(args.target_labels),
                          args.n_bootstrap, args.seed)


def train_segmentation(args: SegmentationArguments) -> dict:
    """Train the decoder on `train_fraction` of TRAIN; Dice on TEST for the untrained and the trained decoder."""
    run = prepare_dense_run(args, cache_features=args.cache_features)
    model = FrozenEncoderUnet(run.encoder, len(args.target_labels), tuple(args.decoder_channels))
    objective = SegmentationObjective(run.train_set.dataset if args.cache_features else run.train_set, args.loss)
    loop, results = train_frozen_encoder_head(args, run, model, objective, evaluate_segmentation, "segmentation",
                                              "untrained_decoder")
    trained = results["test"]
    rows = [(name, v["dice"], *v["ci"]) for name, v in trained["per_class"].items()]
    rows.append(("macro", trained["macro"]["dice"], *trained["macro"]["ci"]))
    table = format_results_table(f"Dice on test ({args.encoder}, {args.train_fraction:.0%} of train, "
                                 f"{args.n_bootstrap} bootstrap resamples)", rows)
    unwrapped = run.accelerator.unwrap_model(loop.model)
    head_state = {k: v for k, v in unwrapped.state_dict().items() if not k.startswith("encoder.")}
    write_dense_results(args, run.accelerator, results, table, head_state, "decoder.pt")
    return results


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    train_segmentation(parse_args(SegmentationArguments, argv))


if __name__ == "__main__":
    main()

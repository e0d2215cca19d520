"""Relaxed-CLIP ablation (paper Table 5) on the synthetic phantom set, CPU-sized.

Four arms of the CLIP objective: vanilla, + sentence sampling (n = 3), + relaxed positives (Eq. 3, t = 0.5,
alpha = 10), and both. Each arm fine-tunes the same tiny dual encoder (tiny CLIP image tower at 64 px, 1-layer BERT
text tower fed by the MiniLM tokenizer, both from random weights) with the same seed and budget, selects the best
epoch by validation zero-shot AUROC, and reports zero-shot macro AUROC on the held-out phantom test split over the
phantom findings that have positives and negatives there, and over the five CheXpert competition findings.
Chance is 0.5. This is a smoke-scale comparison, not a reproduction of the paper's numbers.

    python benchmarks/bench_relaxed_clip_ablation.py [--epochs 15] [--images 512]
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoProcessor

from cxrfm.modeling.relaxed_clip import RelaxedCLIPModel
from cxrfm.processing.datasets._common import CHEXPERT_5, get_label_names
from cxrfm.training.finetune_clip import (
    load_pairs,
    macro_auroc,
    parse_args,
    train,
    validation_probabilities,
    validation_targets,
)

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "finetune_clip_tiny.yaml"
ARMS = {
    "vanilla": ["--sentence_sampling", "false", "--relax", "false"],
    "+sampling": ["--sentence_sampling", "true", "--relax", "false"],
    "+relaxed": ["--sentence_sampling", "false", "--relax", "true"],
    "both": ["--sentence_sampling", "true", "--relax", "true"],
}


def frequent_labels(split, minimum: int = 3) -> list[str]:
    """Findings with at least `minimum` positives and negatives in `split`."""
    labels = np.asarray(split["labels"], dtype=np.float64)
    positives = np.nansum(labels == 1, axis=0)
    negatives = np.nansum(labels == 0, axis=0)
    names = get_label_names(split)
    return [name for name, p, n in zip(names, positives, negatives) if p >= minimum and n >= minimum]


def run_arm(name: str, flags: list[str], epochs: int, images: int, output_root: str) -> dict:
    args = parse_args([
        "--config", str(CONFIG), "--output_dir", f"{output_root}/{name}", "--num_epochs", str(epochs),
        "--phantom_num_images", str(images), "--image_size", "64", "--vision_pooling", "mean",
        "--learning_rate", "2e-3", "--weak_augmentation", "false", "--keep_best_checkpoints", "1", *flags,
    ])
    start = time.perf_counter()
    summary = train(args)
    seconds = time.perf_counter() - start
    (best, validation_auroc), = summary["checkpoints"]
    model = RelaxedCLIPModel.from_pretrained(best).eval()
    processor = AutoProcessor.from_pretrained(best)
    test = load_pairs(args)["test"]
    result = {"arm": name, "val_auroc_5": validation_auroc, "seconds": seconds, "final_loss": summary["losses"][-1][1]}
    for key, labels in (("test_auroc_5", list(CHEXPERT_5)), ("test_auroc_all", frequent_labels(test))):
        probabilities = validation_probabilities(model, processor, test, labels)
        result[key] = macro_auroc(validation_targets(test, labels), probabilities, labels)
    result["n_test_labels"] = len(frequent_labels(test))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--images", type=int, default=512)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as output_root:
        rows = [run_arm(name, flags, options.epochs, options.images, output_root) for name, flags in ARMS.items()]
    print(f"\nRelaxed-CLIP ablation on phantom ({options.images} images, {options.epochs} epochs, CLIP objective, seed 0)")
    print(f"{'arm':<11} {'val AUROC-5':>11} {'test AUROC-5':>12} {'test AUROC-all':>15} {'final loss':>10} {'time s':>7}")
    for row in rows:
        print(
            f"{row['arm']:<11} {row['val_auroc_5']:>11.3f} {row['test_auroc_5']:>12.3f} "
            f"{row['test_auroc_all']:>15.3f} {row['final_loss']:>10.3f} {row['seconds']:>7.0f}"
        )
    print(f"(AUROC-all: the {rows[0]['n_test_labels']} phantom findings with >= 3 positives and negatives in test; chance 0.5)")


if __name__ == "__main__":
    main()

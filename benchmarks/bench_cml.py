"""CXR-CML on the long-tailed phantom set: plain CLIP vs CLIP + L_m (paper and official presets), base vs rare
zero-shot AUROC over several seeds; and the speed of the torch t-mixture EM against scikit-learn's GaussianMixture.

Set-up (building blocks of bench_relaxed_clip_ablation.py): a tiny random CLIP image tower (32 px) and the frozen,
cached pretrained MiniLM text tower; CLIP loss (no relaxed positives, one sampled report sentence per study), Adam at
lr 2e-3 (the paper's 1e-6 fine-tunes a trained CheXzero; a random tiny tower does not move at that rate), batch 32
as in the paper. The CML arms add L_m through `CMLObjective` (its epoch hook refits the paper preset's t-mixture on
its memory bank; an "epoch" is one pass worth of steps). Zero-shot evaluation: CheXzero pair prompts on the held-out
test split over the 40 CXR-LT classes, base/rare split from the TRAINING counts (rare = fewer than `--rare-below`
training positives; classes without test positives are left out of the macro). Smoke scale, not the paper's data.

    python benchmarks/bench_cml.py [--steps 300] [--seeds 0 1 2] [--skip-speed] [--skip-training]

`tests/test_cml_learning.py` imports the building blocks of this file.
"""

import argparse
import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from cxrfm.evaluation.long_tail import base_rare_split, compare_long_tail, long_tail_metrics
from cxrfm.evaluation.zero_shot import zero_shot_probabilities
from cxrfm.modeling.relaxed_clip import clip_loss
from cxrfm.processing.datasets.phantom import load_phantom
from cxrfm.processing.labels import CXR_LT_40
from cxrfm.processing.text import sample_sentences
from cxrfm.training.cml_objective import CMLConfig, CMLObjective
from cxrfm.training.losses.student_t_mixture import fit_student_t_mixture
from cxrfm.training.recipe import Objective

_spec = importlib.util.spec_from_file_location(
    "bench_relaxed_clip_ablation", Path(__file__).resolve().parent / "bench_relaxed_clip_ablation.py"
)
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)

ARMS = {"clip": None, "cml-paper": "paper", "cml-official": "official"}


def train_labels(num_images: int, image_size: int, seed: int) -> np.ndarray:
    """(N, 40) training labels of the same phantom split `load_phantom_pairs` trains on."""
    data = load_phantom(num_images=num_images, image_size=image_size, seed=seed, split_fractions=(0.75, 0.0, 0.25),
                        with_masks=False, lateral_fraction=0.0, labels_only=True)
    return np.asarray(data["train"]["labels"], dtype=np.float64)


def make_objective(model, text_features, pairs, preset: str | None, seed: int, **overrides):
    """A CMLObjective around the benchmark's CLIP step (None: plain CLIP, the same objective without L_m)."""

    rng = np.random.default_rng(seed)

    def contrastive(model, rows):
        # one sampled report sentence per study (relaxed-CLIP sentence sampling, n = 1): ~100 distinct sentences,
        # so the frozen MiniLM runs once per sentence instead of once per whole report
        texts = [sample_sentences(pairs.train_sentences[i], 1, rng) for i in rows]
        image_embeds = F.normalize(model.get_image_features(pixel_values=pairs.train_pixels[rows]).pooler_output, dim=-1)
        text_embeds = F.normalize(model.text_projection(text_features(texts)), dim=-1)
        return {"clip_loss": clip_loss(image_embeds, text_embeds, model.temperature(), relax=False)}, image_embeds, text_embeds

    if preset is None:
        return ContrastiveOnly(contrastive)
    return CMLObjective(CMLConfig.from_preset(preset, seed=seed, **overrides), contrastive)


class ContrastiveOnly(Objective):
    """The plain-CLIP arm: the same contrastive step without L_m."""

    def __init__(self, contrastive):
        self.contrastive = contrastive

    def compute_loss(self, model, batch):
        return self.contrastive(model, batch)[0]


def finetune(model, objective, pairs, steps: int, batch_size: int = 32, learning_rate: float = 2e-3, seed: int = 0):
    """Adam on the trainable parameters; an epoch is len(train) // batch_size steps (the epoch hook runs at its
    start). Returns (losses per step, seconds per step)."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    steps_per_epoch = max(1, len(pairs.train_sentences) // batch_size)
    model.train()
    losses, seconds = [], []
    for step in range(steps):
        if step % steps_per_epoch == 0:
            objective.on_epoch_start(None, step // steps_per_epoch)
        start = time.perf_counter()
        rows = rng.choice(len(pairs.train_sentences), batch_size, replace=False)
        terms = objective.compute_loss(model, rows)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append({name: value.item() for name, value in terms.items()})
    return losses, seconds


def zero_shot_40(model, tokenizer, pairs) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return zero_shot_probabilities(model, tokenizer, pairs.test_pixels, list(CXR_LT_40)).numpy()


def run_training(options) -> None:
    pairs = ablation.load_phantom_pairs(options.images, options.image_size, seed=0)
    split = base_rare_split(train_labels(options.images, options.image_size, 0), list(CXR_LT_40), options.rare_below)
    targets = pairs.test_labels[:, [pairs.label_names.index(name) for name in CXR_LT_40]]
    text_features = ablation.FrozenTextFeatures(*ablation.build_model(options.image_size))
    rows, probabilities = {arm: [] for arm in ARMS}, {arm: [] for arm in ARMS}
    for seed in options.seeds:
        for arm, preset in ARMS.items():
            model, tokenizer = ablation.build_model(options.image_size, seed)
            objective = make_objective(model, text_features, pairs, preset, seed)
            losses, seconds = finetune(model, objective, pairs, options.steps, seed=seed)
            scores = zero_shot_40(model, tokenizer, pairs)
            probabilities[arm].append(scores)
            result = long_tail_metrics(targets, scores, list(CXR_LT_40), split, n_bootstrap=0)
            rows[arm].append({
                "all": result["all"]["macro"]["auroc"], "base": result["base"]["macro"]["auroc"],
                "rare": result["rare"]["macro"]["auroc"], "metric": np.mean([r.get("metric_loss", np.nan) for r in losses[-50:]]),
                "ms": 1000 * np.median(seconds[5:]),
            })
    evaluated = {group: [n for n in split[group] if 0 < np.nansum(targets[:, CXR_LT_40.index(n)] == 1)]
                 for group in ("base", "rare")}
    print(f"\nCXR-CML on phantom ({options.images} images at {options.image_size} px, 75/25 patient split, "
          f"{options.steps} steps of 32, seeds {options.seeds}); zero-shot test AUROC over the 40 CXR-LT classes, "
          f"mean +- sd over seeds")
    print(f"base/rare from training counts (rare < {options.rare_below} positives): {len(split['base'])} base, "
          f"{len(split['rare'])} rare; with test positives: {len(evaluated['base'])} base, {len(evaluated['rare'])} rare")
    print(f"{'arm':<13} {'all':>15} {'base':>15} {'rare':>15} {'L_m (last 50)':>14} {'ms/step':>8}")
    for arm, values in rows.items():
        column = {key: np.array([row[key] for row in values]) for key in values[0]}
        print(f"{arm:<13} " + " ".join(f"{column[g].mean():>7.3f} +- {column[g].std():.3f}" for g in ("all", "base", "rare"))
              + f" {column['metric'].mean():>14.4f} {column['ms'].mean():>8.1f}")
    for arm in ("cml-paper", "cml-official"):
        pooled = compare_long_tail(np.concatenate([targets] * len(options.seeds)),
                                   np.concatenate(probabilities[arm]), np.concatenate(probabilities["clip"]),
                                   list(CXR_LT_40), split, n_permutations=1000, seed=0)
        print(f"{arm} - clip (paired permutation over seeds x test images): " + ", ".join(
            f"{g} {pooled[g]['auroc']['delta']:+.3f} (p={pooled[g]['auroc']['p_value']:.3f})" for g in ("all", "base", "rare")))
    overhead = {arm: np.mean([row["ms"] for row in rows[arm]]) for arm in ARMS}
    print("per-step overhead of L_m: " + ", ".join(
        f"{arm} {overhead[arm] - overhead['clip']:+.1f} ms ({overhead[arm] / overhead['clip']:.2f}x)" for arm in ARMS if arm != "clip"))


def run_speed(options) -> None:
    """torch t-mixture ECM vs scikit-learn GaussianMixture: same data, K, init scheme (k-means++ seeds, hard
    assignment, M-step), diagonal covariances, the same number of EM iterations (tolerance 0)."""
    generator = np.random.default_rng(0)
    centres = generator.normal(0, 1, (options.k, options.dim))
    data = centres[generator.integers(0, options.k, options.n)] + 0.3 * generator.standard_t(3.0, (options.n, options.dim))
    arms = {
        "sklearn GaussianMixture (float64)": None,
        "torch GMM (nu = inf, float64)": (math.inf, torch.float64),
        "torch t-mixture (nu = 4, float64)": (4.0, torch.float64),
        "torch t-mixture (nu = 4, float32)": (4.0, torch.float32),
    }
    seconds, scores = {name: [] for name in arms}, {}
    for repeat in range(options.repeats):  # interleaved, so load from other processes hits every arm alike
        for name, arm in arms.items():
            start = time.perf_counter()
            if arm is None:
                fitted = GaussianMixture(options.k, covariance_type="diag", max_iter=options.iterations, tol=0.0,
                                         init_params="k-means++", random_state=repeat).fit(data)
                seconds[name].append(time.perf_counter() - start)
                scores[name] = fitted.score(data)
            else:
                fitted = fit_student_t_mixture(torch.tensor(data, dtype=arm[1]), options.k, nu=arm[0],
                                               init="kmeans++", max_iter=options.iterations, tol=0.0,
                                               generator=torch.Generator().manual_seed(repeat))
                seconds[name].append(time.perf_counter() - start)
                scores[name] = fitted.score(torch.tensor(data)).item()
    baseline = min(seconds["sklearn GaussianMixture (float64)"])
    print(f"\nEM speed: {options.n} x {options.dim}, K = {options.k}, {options.iterations} iterations, diagonal, "
          f"{torch.get_num_threads()} torch threads; best of {options.repeats} interleaved runs")
    print(f"{'fit':<38} {'seconds':>8} {'speed-up':>9} {'mean log-lik':>13}")
    for name in arms:
        print(f"{name:<38} {min(seconds[name]):>8.3f} {baseline / min(seconds[name]):>8.1f}x {scores[name]:>13.4f}")
    print("(log-likelihoods: mean per sample on the data under each fitted model; the t-mixture's is the t density.)")


def run_overhead(options) -> None:
    """Cost of L_m alone at the paper's sizes (global batch 32 of 512-d embeddings, gradients through the loss):
    per step, and the paper preset's epoch-start refit on a full 4096-embedding memory bank."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 512, generator=generator)
    bank = F.normalize(centres[torch.randint(0, 40, (4096,), generator=generator)]
                       + 0.5 * torch.randn(4096, 512, generator=generator), dim=-1)
    images = torch.randn(32, 512, generator=generator, requires_grad=True)
    texts = torch.randn(32, 512, generator=generator, requires_grad=True)
    print(f"\nL_m overhead at 512-d, global batch 32 ({torch.get_num_threads()} torch threads; median of {options.repeats})")
    for preset in ("paper", "official"):
        objective = CMLObjective(CMLConfig.from_preset(preset), contrastive=None)
        metric = objective.metric
        if preset == "paper":
            metric.bank = bank
            start = time.perf_counter()
            metric.refit()
            print(f"paper: epoch-start refit on 4096 x 512, K = 40: {time.perf_counter() - start:.2f} s "
                  f"({metric.config.init} start, then {metric.mixture.log_likelihood.shape[0] - 1} t-EM iterations)")
        times = []
        for _ in range(options.repeats):
            start = time.perf_counter()
            metric(images, texts).backward()
            times.append(time.perf_counter() - start)
        print(f"{preset}: L_m forward + backward per step {1000 * np.median(times):.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rare-below", type=int, default=5,
                        help="rare = fewer training positives than this (5 of 900 gives 28 base / 12 rare, as the paper)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    threadpool_limits(options.threads)  # scikit-learn's BLAS / OpenMP get the same thread count as torch
    if not options.skip_speed:
        run_speed(options)
    if not options.skip_overhead:
        run_overhead(options)
    if not options.skip_training:
        run_training(options)


if __name__ == "__main__":
    main()

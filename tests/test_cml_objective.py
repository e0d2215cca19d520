"""CXR-CML objective: the official procedure's saturation, the paper preset's memory bank, 2 processes vs 1."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.multiprocessing import start_processes

from cxrfm.training.cml_objective import (
    CMLConfig,
    CMLMetricLoss,
    batch_components,
    official_metric_loss,
    official_pseudo_labels,
)
from cxrfm.training.distributed import gather_features


def test_batch_components_is_the_official_table():
    # reference §4b: 2-9 -> 2; 10-11 -> 3; 12-14 -> 4; 15-49 -> 5; 50-159 -> B // 4; >= 160 -> 40
    table = {2: 2, 9: 2, 10: 3, 11: 3, 12: 4, 14: 4, 15: 5, 32: 5, 49: 5, 50: 12, 159: 39, 160: 40, 1024: 40}
    assert {b: batch_components(b) for b in table} == table


def test_official_saturates_in_512_dims_and_its_hinge_is_exactly_zero():
    """A batch of 32 in 512-d: every clipped Student-t log-density saturates (own cluster ~ +3700 >> 700), so the
    responsibilities are exactly the mixture weights for every image, and at exp(0.07) the hinge is 0 with a zero
    gradient. A smaller distance scale makes the same hinge active: the zero comes from the initial temperature."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(32, 512, generator=generator, requires_grad=True)
    texts = torch.randn(32, 512, generator=generator)
    config = CMLConfig.from_preset("official", n_init=1)
    out = official_pseudo_labels(images, config, torch.Generator().manual_seed(0))
    log_t = out["mixture"].log_density(F.normalize(images.detach().double(), dim=-1))
    assert out["saturated"].item() == 1.0 and log_t.min() > 700 and log_t.max() > 3000
    weights = out["mixture"].weights[0]
    assert len(weights) == 5
    torch.testing.assert_close(out["responsibilities"], weights.expand(32, -1), rtol=0, atol=1e-15)
    loss = official_metric_loss(images, texts, out["labels"].float(), distance_temp=0.07)
    loss.backward()
    assert loss.item() == 0.0 and images.grad.abs().max().item() == 0.0
    images.grad = None
    active = official_metric_loss(images, texts, out["labels"].float(), distance_temp=-3.0)
    active.backward()
    assert active.item() > 0.4 and images.grad.abs().max().item() > 0


def test_official_is_deterministic_under_a_seed():
    images = torch.randn(12, 16, generator=torch.Generator().manual_seed(1))
    config = CMLConfig.from_preset("official")
    first, second = (official_pseudo_labels(images, config, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first["labels"], second["labels"])
    assert first["labels"].shape == (12, 4) and torch.allclose(first["labels"].sum(-1), torch.ones(12, dtype=torch.float64))


def clustered(n: int, generator: torch.Generator, dim: int = 8, k: int = 4) -> torch.Tensor:
    centres = torch.randn(k, dim, generator=generator) * 3
    return centres[torch.randint(0, k, (n,), generator=generator)] + 0.3 * torch.randn(n, dim, generator=generator)


def test_paper_memory_bank_first_fit_refit_and_state_round_trip():
    generator = torch.Generator().manual_seed(0)
    config = CMLConfig.from_preset("paper", n_components=4, memory_bank_size=48, min_fit_size=32, em_iterations=20)
    metric = CMLMetricLoss(config)
    batches = [clustered(8, generator) for _ in range(8)]
    texts = torch.randn(8, 8, generator=generator)
    losses = [metric(batch.requires_grad_(True), texts) for batch in batches[:3]]
    assert metric.mixture is None and losses[0].item() == 0.0  # 24 < min_fit_size embeddings: the bank is still filling
    loss = metric(batches[3].requires_grad_(True), texts)  # 32 = min_fit_size: first fit on the bank, then triplets
    assert metric.mixture is not None and metric.fits == 1 and loss.item() > 0
    loss.backward()
    assert batches[3].grad.abs().sum() > 0
    for batch in batches[4:]:
        metric(batch, texts)
    assert len(metric.bank) == 48  # FIFO of the most recent embeddings
    torch.testing.assert_close(metric.bank[-8:], F.normalize(batches[-1].detach(), dim=-1))
    metric.refit()  # what on_epoch_start does
    assert metric.fits == 2
    restored = CMLMetricLoss(config)
    restored.load_state_dict(metric.state_dict())
    probe = clustered(8, generator)
    assert torch.equal(restored(probe, texts), metric(probe, texts))
    assert torch.equal(restored.last["labels"], metric.last["labels"])


def test_paper_per_batch_uses_the_batch_adaptive_k():
    config = CMLConfig.from_preset("paper", fit_on="batch", em_iterations=10)
    metric = CMLMetricLoss(config)
    metric(clustered(32, torch.Generator().manual_seed(0)), torch.randn(32, 8))
    assert metric.mixture.means.shape == (1, 5, 8)  # min(40, batch_components(32) = 5)
    with pytest.raises(ValueError, match="fit_on"):
        CMLConfig.from_preset("paper", fit_on="dataset")
    with pytest.raises(ValueError, match="unknown CXR-CML preset"):
        CMLConfig.from_preset("chexzero")


WORLD_SIZE, LOCAL_BATCH, IN_DIM, EMBED_DIM = 2, 16, 6, 8
SETTINGS = {
    "paper-batch": dict(fit_on="batch", em_iterations=15),
    "paper-epoch-soft-image_text": dict(n_components=3, min_fit_size=32, soft_labels=True, triplet_modality="image_text", em_iterations=15),
    "official": dict(procedure="official", covariance_type="full", nu=8.0, n_init=2, em_iterations=15),
}


def problem():
    generator = torch.Generator().manual_seed(0)
    inputs = {"image": clustered(WORLD_SIZE * LOCAL_BATCH, generator, dim=IN_DIM),
              "text": torch.randn(WORLD_SIZE * LOCAL_BATCH, IN_DIM, generator=generator)}
    weights = {name: torch.randn(IN_DIM, EMBED_DIM, generator=generator) for name in inputs}
    return inputs, weights


def metric_loss_and_grads(name, inputs, weights, gather=lambda image, text: (image, text)):
    params = {key: value.clone().requires_grad_(True) for key, value in weights.items()}
    images, texts = gather(inputs["image"] @ params["image"], inputs["text"] @ params["text"])
    metric = CMLMetricLoss(CMLConfig(**SETTINGS[name]))
    loss = metric(images, texts)
    loss.backward()
    grads = {key: torch.zeros_like(value) if value.grad is None else value.grad for key, value in params.items()}
    return loss.detach(), grads, metric.last["labels"]


def _worker(rank, rendezvous, output_dir, inputs, weights):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    try:
        local = {key: value[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH] for key, value in inputs.items()}
        results = {}
        for name in SETTINGS:
            gather = lambda image, text: (gather_features(image), gather_features(text))  # noqa: E731 (with gradients)
            loss, grads, labels = metric_loss_and_grads(name, local, weights, gather)
            for value in grads.values():  # DDP's gradient average
                dist.all_reduce(value)
                value /= WORLD_SIZE
            results[name] = (loss, grads, labels)
        torch.save(results, f"{output_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_two_processes_cluster_the_gathered_batch_like_one_process(tmp_path):
    inputs, weights = problem()
    start_processes(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), inputs, weights),
                    nprocs=WORLD_SIZE, start_method="fork")
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    for name in SETTINGS:
        full_loss, full_grads, full_labels = metric_loss_and_grads(name, inputs, weights)
        for rank, results in enumerate(per_rank):
            loss, grads, labels = results[name]
            assert labels.shape[0] == WORLD_SIZE * LOCAL_BATCH  # pseudo-labels of the whole global batch
            torch.testing.assert_close(labels, full_labels, msg=lambda m: f"{name}/rank {rank}: {m}")
            torch.testing.assert_close(loss, full_loss, msg=lambda m: f"{name}/rank {rank}: {m}")
            for key in full_grads:
                torch.testing.assert_close(grads[key], full_grads[key], msg=lambda m: f"{name}/rank {rank} {key}: {m}")

"""Contrastive negatives gathered across 2 CPU processes (gloo) give the full-batch loss and gradients."""

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import start_processes

from cxrfm.modeling.relaxed_clip import clip_loss, slip_loss, uniclip_loss
from cxrfm.training.distributed import gather_features, get_rank_and_world_size

WORLD_SIZE = 2
LOCAL_BATCH = 3
IN_DIM, EMBED_DIM = 6, 4
OBJECTIVES = ("clip", "slip", "uniclip")
VIEWS = ("image", "weak", "strong_a", "strong_b", "text")


def make_problem():
    """Inputs of 2 x 3 studies (5 views each) and a tiny linear 'encoder' per modality, with a log-temperature."""
    generator = torch.Generator().manual_seed(0)
    inputs = {view: torch.randn(WORLD_SIZE * LOCAL_BATCH, IN_DIM, generator=generator) for view in VIEWS}
    weights = {
        "image": torch.randn(IN_DIM, EMBED_DIM, generator=generator),
        "text": torch.randn(IN_DIM, EMBED_DIM, generator=generator),
        "logit_scale": torch.tensor(2.0),
    }
    return inputs, weights


def objective_loss(objective, embeds, params, **distributed):
    temperature = torch.exp(-params["logit_scale"])
    if objective == "clip":
        return clip_loss(embeds["image"], embeds["text"], temperature, relax=True, **distributed)
    if objective == "slip":
        terms = slip_loss(
            embeds["weak"], embeds["text"], embeds["strong_a"], embeds["strong_b"], temperature, relax=True,
            **distributed,
        )
        return sum(terms.values())
    return uniclip_loss(embeds["image"], embeds["weak"], embeds["text"], temperature, relax=True, **distributed)


def loss_and_grads(objective, inputs, weights, gather=lambda x: x, **distributed):
    params = {name: value.clone().requires_grad_(True) for name, value in weights.items()}
    embeds = {
        view: gather(x @ (params["text"] if view == "text" else params["image"])) for view, x in inputs.items()
    }
    loss = objective_loss(objective, embeds, params, **distributed)
    loss.backward()
    return loss.detach(), {name: value.grad for name, value in params.items()}


def _worker(rank, rendezvous, output_dir, inputs, weights):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    try:
        assert get_rank_and_world_size() == (rank, WORLD_SIZE)
        local = {view: x[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH] for view, x in inputs.items()}
        results = {}
        for objective in OBJECTIVES:
            for mode, distributed in (("local", {"rank": rank, "local_batch_size": LOCAL_BATCH}), ("global", {})):
                loss, grads = loss_and_grads(objective, local, weights, gather_features, **distributed)
                # what DDP does: average the gradients (and we average the losses) over processes
                for value in (loss, *grads.values()):
                    dist.all_reduce(value)
                    value /= WORLD_SIZE
                results[objective, mode] = (loss, grads)
        torch.save(results, f"{output_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_features_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_features(x) is x
    assert get_rank_and_world_size() == (0, 1)


@pytest.mark.multiprocess
def test_two_process_losses_and_gradients_match_full_batch(tmp_path):
    inputs, weights = make_problem()
    start_processes(
        _worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), inputs, weights), nprocs=WORLD_SIZE,
        start_method="fork",
    )
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    for objective in OBJECTIVES:
        full_loss, full_grads = loss_and_grads(objective, inputs, weights)
        for mode in ("local", "global"):
            for rank, results in enumerate(per_rank):
                loss, grads = results[objective, mode]
                context = f"{objective}/{mode}/rank {rank}"
                torch.testing.assert_close(loss, full_loss, msg=lambda m: f"{context}: {m}")
                for name in full_grads:
                    assert full_grads[name].abs().sum() > 0, f"{name} gets no gradient in {objective}"
                    torch.testing.assert_close(grads[name], full_grads[name], msg=lambda m: f"{context} {name}: {m}")

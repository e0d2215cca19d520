"""MGCA's global losses on 2 CPU processes (gloo): in the `paper` preset (ITA negatives gathered with gradients,
Sinkhorn sums reduced) the process-averaged losses and gradients equal the full-batch ones; in the `official`
preset (everything per process) they do not, as in the authors' runs."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.multiprocessing import start_processes

from cxrfm.modeling.mgca import MGCAConfig, MGCAModel
from cxrfm.modeling.mgca._distributed import rank_and_world_size

WORLD_SIZE, LOCAL_BATCH, IN_DIM = 2, 4, 6
PRESETS = ("tiny", "tiny-official")


def make_problem():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD_SIZE * LOCAL_BATCH, IN_DIM, generator=generator)
    texts = images + 0.5 * torch.randn(WORLD_SIZE * LOCAL_BATCH, IN_DIM, generator=generator)
    projections = {"image": torch.randn(IN_DIM, 16, generator=generator), "text": torch.randn(IN_DIM, 16, generator=generator)}
    models = {}
    for preset in PRESETS:
        torch.manual_seed(0)
        # epsilon 0.5: sharper codes than the default would hide nothing but make the CPA term nearly constant
        models[preset] = MGCAModel(MGCAConfig.from_preset(preset, sinkhorn_epsilon=0.5)).eval()
    return images, texts, projections, models


def losses_and_grads(model, images, texts, projections):
    """ITA + CPA of the rows given, through a linear 'encoder' per modality; grads of encoders and prototypes."""
    params = {name: value.clone().requires_grad_(True) for name, value in projections.items()}
    model.zero_grad()
    image_embeds = F.normalize(images @ params["image"], dim=-1)
    text_embeds = F.normalize(texts @ params["text"], dim=-1)
    ita, cpa = model.global_losses(
        image_embeds, text_embeds, model.prototype_scores(image_embeds), model.prototype_scores(text_embeds)
    )
    (ita + cpa).backward()
    grads = {name: value.grad for name, value in params.items()}
    grads["prototypes"] = model.prototype_layer.weight.grad.clone()
    return torch.stack([ita.detach(), cpa.detach()]), grads


def _worker(rank, rendezvous, output_dir, images, texts, projections, models):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD_SIZE)
    try:
        assert rank_and_world_size() == (rank, WORLD_SIZE)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for preset, model in models.items():
            losses, grads = losses_and_grads(model, images[rows], texts[rows], projections)
            for value in (losses, *grads.values()):  # what DDP does with gradients, and we with the losses
                dist.all_reduce(value)
                value /= WORLD_SIZE
            results[preset] = (losses, grads)
        torch.save(results, f"{output_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_paper_preset_two_processes_match_full_batch(tmp_path):
    images, texts, projections, models = make_problem()
    start_processes(
        _worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), images, texts, projections, models),
        nprocs=WORLD_SIZE, start_method="fork",
    )
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    for preset in PRESETS:
        full_losses, full_grads = losses_and_grads(models[preset], images, texts, projections)
        for rank, results in enumerate(per_rank):
            losses, grads = results[preset]
            if preset == "tiny":
                torch.testing.assert_close(losses, full_losses, msg=lambda m: f"rank {rank} losses: {m}")
                for name, full in full_grads.items():
                    assert full.abs().sum() > 0, name
                    torch.testing.assert_close(grads[name], full, msg=lambda m: f"rank {rank} {name}: {m}")
            else:
                # official: negatives and Sinkhorn stay per process, so the ITA and CPA values differ
                assert (losses - full_losses).abs().min() > 1e-3, (losses, full_losses)

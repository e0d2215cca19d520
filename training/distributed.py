"""Gathering contrastive features across processes.

Accelerate's `gather` has no autograd (it is for metrics), so contrastive negatives from other processes would
carry no gradient. `gather_features(x, with_grad=True)` uses the autograd all-gather of
`torch.distributed.nn.functional`, whose backward sums each process's gradients into the source tensor. Combined
with the local-anchor losses of `cxrfm.modeling.relaxed_clip` (rank + local_batch_size) and DDP's gradient
average, every process then gets the gradient of the full-batch loss.
"""

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def get_rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `features` (B, ...) of every process in rank order -> (world_size * B, ...).

    Every process must pass the same shape (drop the last uneven batch). With `with_grad=True` gradients flow back
    to every process's features; with `with_grad=False` only this process's own rows keep their gradient (its
    tensor is put back in place of the gathered copy, as open_clip does). Without an initialised process group,
    or with one process, `features` is returned unchanged.
    """
    rank, world_size = get_rank_and_world_size()
    if world_size == 1:
        return features
    if with_grad:
        # torch 2.14 marks this public autograd collective deprecated in favour of a private
        # (`_functional_collectives`) one; we keep the public API and silence only that notice.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(dist_nn.all_gather(features), dim=0)
    gathered = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(gathered, features.contiguous())
    gathered[rank] = features
    return torch.cat(gathered, dim=0)


__all__ = ["gather_features", "get_rank_and_world_size"]

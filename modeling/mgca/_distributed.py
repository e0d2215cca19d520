"""Collectives for the `paper` preset: ITA negatives gathered with gradients, Sinkhorn sums reduced.

The model folder is saved as remote code and imports only its siblings, so it carries this small helper instead
of importing `cxrfm.training.distributed` (same approach: autograd all-gather, whose backward sums every
process's gradients into the source rows). Without an initialised process group every function is the identity.
"""

import warnings

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """(B, ...) of every process concatenated in rank order -> (world_size * B, ...), differentiable.
    Every process must pass the same shape."""
    if rank_and_world_size()[1] == 1:
        return features
    import torch.distributed.nn.functional as dist_nn

    # torch marks this public autograd collective deprecated in favour of a private one; keep the public API.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(features.contiguous()), dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor, no gradient); the identity on one process."""
    if rank_and_world_size()[1] == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over processes (a new tensor, no gradient); the identity on one process."""
    if rank_and_world_size()[1] == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor

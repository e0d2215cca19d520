"""Teacher targets of the DINO and iBOT losses: EMA softmax-centering or Sinkhorn-Knopp, reduced across processes.

Centering (DINO, Caron et al. 2021, Eq. in §3.1; facebookresearch/dinov2 `loss/dino_clstoken_loss.py`):

    P_t = softmax((z_t - c) / tau_t),   then   c <- m c + (1 - m) mean_b z_t[b]      (m = 0.9)

The batch mean runs over every row of every process (sum and row count are all-reduced), and the current batch is
centred with the centre from earlier batches only (the official lazy update). Official difference: for iBOT it
averages per-process means (`sum / (len * world_size)`), which differs when processes mask different numbers of
patches; here the counts are reduced too, so the centre is the mean over all masked patches of the global batch.

Sinkhorn-Knopp (SwAV, Caron et al. 2020; CheXFound's `train.centering: sinkhorn_knopp`):

    Q = exp(z_t / tau_t)^T  (K x B_tot),  Q /= sum(Q);  3 x { Q /= rowsum(Q); Q /= K;  Q /= colsum(Q); Q /= B_tot };
    P_t = (B_tot Q)^T

in float32 (as the official code forces), with sum(Q) and the row sums all-reduced and B_tot the number of rows
(images for DINO, masked patches for iBOT) summed over processes. The official iBOT version all-reduces
unconditionally and crashes in a single process (dinov2 PR #590); this one reduces only when a process group
exists, and returns an empty `(0, K)` target when no patch is masked anywhere.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

CENTERING_MODES = ("centering", "sinkhorn_knopp")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over processes in place (no-op without an initialised process group); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def softmax_center(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """P_t = softmax((z_t - c) / tau_t) of `(B, K)` logits and a `(1, K)` centre (float32)."""
    return F.softmax((teacher_logits.float() - center.reshape(1, -1)) / teacher_temp, dim=-1)


@torch.no_grad()
def ema_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """c m + (1 - m) mean of the `(B, K)` logits over all processes' rows; `center` unchanged if no row anywhere."""
    row_sum = teacher_logits.float().sum(dim=0)
    count = torch.tensor([float(teacher_logits.shape[0])], device=teacher_logits.device)
    reduced = all_reduce_sum(torch.cat([row_sum, count]))
    if reduced[-1] == 0:
        return center
    batch_center = (reduced[:-1] / reduced[-1]).reshape(center.shape)
    return center * momentum + batch_center * (1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """P_t of the module docstring for `(B, K)` logits (B may be 0 on some or all processes) -> `(B, K)` float32."""
    logits = teacher_logits.float()
    q = torch.exp(logits / teacher_temp).t()  # K x B
    n_prototypes = q.shape[0]
    n_samples = all_reduce_sum(torch.tensor([float(logits.shape[0])], device=logits.device))
    if n_samples.item() == 0:
        return logits.new_zeros(logits.shape)
    q /= all_reduce_sum(q.sum().reshape(1))
    for _ in range(n_iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


class TeacherTargets(nn.Module):
    """Stateful target maker for one loss (DINO or iBOT).

    Args:
        out_dim: number of prototypes K.
        mode: "centering" (EMA centre, buffer `center` `(1, K)`) or "sinkhorn_knopp" (stateless; CheXFound).
        center_momentum: m of the centre update.
    """

    def __init__(self, out_dim: int, mode: str = "sinkhorn_knopp", center_momentum: float = 0.9):
        super().__init__()
        if mode not in CENTERING_MODES:
            raise ValueError(f"TeacherTargets.mode must be one of {CENTERING_MODES}, got {mode!r}.")
        self.mode = mode
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """`(B, K)` teacher head outputs -> `(B, K)` targets; in centering mode the centre is then updated."""
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        targets = softmax_center(teacher_logits, self.center, teacher_temp)
        self.center.copy_(ema_center(self.center, teacher_logits, self.center_momentum))
        return targets


__all__ = ["CENTERING_MODES", "TeacherTargets", "all_reduce_sum", "ema_center", "sinkhorn_knopp", "softmax_center"]

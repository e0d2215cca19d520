"""DINO [CLS]-token self-distillation loss with the official cross-crop pairing and normalisation.

CheXFound paper (001) §III-A: the student's [CLS] prototype distribution on every crop is pulled towards the
teacher's distribution on a *different* global crop. Facts from facebookresearch/dinov2 (identical in
RPIDIAL/CheXFound) `loss/dino_clstoken_loss.py` and `train/ssl_meta_arch.py` `forward_backward`:

- one (student crop s, teacher crop t) term is  H(t, s) = -mean_b sum_k P_t[b, k] log softmax(z_s[b] / tau_s)[k]
  with student temperature tau_s = 0.1;
- global student crops are paired with the *other* global teacher crop (the teacher output is swapped), local
  student crops with every global teacher crop;
- both parts are divided by the number of pairs  n_g (n_g - 1) + max(n_l n_g, 1)  (2 + 16 = 18 for 2 global and
  8 local crops), so the total is the mean over all pairs. With no local crops the official code still counts one
  local term (the `max(., 1)`); this is kept.
"""

import torch
import torch.nn.functional as F


def dino_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """H(t, s) = -mean_b sum_k P_t[b, k] log softmax(z_s[b] / tau_s)[k].

    Args:
        student_logits: `(B, K)` student head outputs z_s (prototype scores).
        teacher_probs: `(B, K)` teacher targets P_t (rows sum to 1; centred softmax or Sinkhorn-Knopp).
        student_temp: tau_s.
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"dino_cross_entropy: student {tuple(student_logits.shape)} and teacher {tuple(teacher_probs.shape)} "
            "must have the same (B, K) shape."
        )
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_probs).sum(dim=-1).mean()


def dino_loss_denominator(n_global_crops: int, n_local_crops: int) -> int:
    """Number of (student crop, other teacher crop) pairs as the official code counts them:
    n_g (n_g - 1) + max(n_l n_g, 1)."""
    return n_global_crops * (n_global_crops - 1) + max(n_local_crops * n_global_crops, 1)


def dino_clstoken_loss(
    student_global_logits: torch.Tensor,
    student_local_logits: torch.Tensor | None,
    teacher_probs: torch.Tensor,
    n_global_crops: int = 2,
    student_temp: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(dino_global_loss, dino_local_loss)`, each already divided by `dino_loss_denominator`.

    dino_global = sum_{s != t} H(t, s) / D over global crops s, t;  dino_local = sum_{l, t} H(t, l) / D over local
    crops l and global teacher crops t;  D = n_g (n_g - 1) + max(n_l n_g, 1).

    Args:
        student_global_logits: `(n_g * B, K)` student outputs on the global crops, crop-major (crop 0's B rows first).
        student_local_logits: `(n_l * B, K)` student outputs on the local crops, crop-major, or None (no local crops).
        teacher_probs: `(n_g * B, K)` teacher targets for the global crops in the same (unswapped) crop order.
        n_global_crops: n_g.
        student_temp: tau_s.
    """
    if teacher_probs.shape[0] % n_global_crops:
        raise ValueError(f"teacher_probs has {teacher_probs.shape[0]} rows, not a multiple of n_global_crops={n_global_crops}.")
    batch_size = teacher_probs.shape[0] // n_global_crops
    if student_global_logits.shape[0] != teacher_probs.shape[0]:
        raise ValueError(
            f"student_global_logits has {student_global_logits.shape[0]} rows, teacher_probs {teacher_probs.shape[0]}."
        )
    teacher_crops = teacher_probs.split(batch_size)
    student_global = student_global_logits.split(batch_size)
    n_local_crops = 0
    if student_local_logits is not None:
        if student_local_logits.shape[0] % batch_size:
            raise ValueError(
                f"student_local_logits has {student_local_logits.shape[0]} rows, not a multiple of the batch {batch_size}."
            )
        n_local_crops = student_local_logits.shape[0] // batch_size
    denominator = dino_loss_denominator(n_global_crops, n_local_crops)

    global_loss = student_global_logits.new_zeros((), dtype=torch.float32)
    for s, student in enumerate(student_global):
        for t, teacher in enumerate(teacher_crops):
            if s != t:
                global_loss = global_loss + dino_cross_entropy(student, teacher, student_temp)
    local_loss = global_loss.new_zeros(())
    if n_local_crops:
        for student in student_local_logits.split(batch_size):
            for teacher in teacher_crops:
                local_loss = local_loss + dino_cross_entropy(student, teacher, student_temp)
    return global_loss / denominator, local_loss / denominator


__all__ = ["dino_clstoken_loss", "dino_cross_entropy", "dino_loss_denominator"]

"""iBOT masked-patch self-distillation loss, with the official per-image weighting.

CheXFound paper (001) §III-A: for the patches masked in the student's global crops, the student's patch-token
prototype distribution is pulled towards the teacher's distribution on the same, unmasked patch. Facts from
facebookresearch/dinov2 (identical in RPIDIAL/CheXFound) `loss/ibot_patch_loss.py` `forward_masked`, `data/collate.py`
and `train/ssl_meta_arch.py`:

    L_iBOT = -(1 / N_img) sum_n (1 / max(M_n, 1)) sum_{p masked in image n} sum_k P_t[p, k] log softmax(z_s[p] / tau_s)[k]

with M_n the number of masked patches of image n and N_img the number of global-crop images (n_g * B), *including
the images that have no mask*: every masked image counts equally whatever its mask size, and an unmasked image
contributes 0 but still counts in N_img. tau_s = 0.1. The official `loss_scales * 1/n_global_crops` factor is 1 for
2 global crops and is not repeated here; the recipe multiplies by the iBOT weight (3.0 for CheXFound).
"""

import torch
import torch.nn.functional as F


def ibot_mask_weights(masks: torch.Tensor) -> torch.Tensor:
    """Per-masked-patch weights 1 / max(M_n, 1), float32, in the order of `masks.flatten().nonzero()`.

    Args:
        masks: `(N_img, N)` bool, True where a patch is masked.

    Returns:
        `(M,)` float32 weights, M = masks.sum().
    """
    if masks.dtype != torch.bool or masks.ndim != 2:
        raise ValueError(f"ibot_mask_weights expects a (N_img, N) bool mask, got {masks.dtype} {tuple(masks.shape)}.")
    per_image = 1.0 / masks.sum(dim=-1, dtype=torch.float32).clamp(min=1.0)
    return per_image.unsqueeze(-1).expand_as(masks)[masks]


def ibot_patch_loss(
    student_masked_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    mask_weights: torch.Tensor,
    n_images: int,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """L_iBOT above.

    Args:
        student_masked_logits: `(M, K)` student head outputs z_s of the M masked patches (all images, flattened).
        teacher_probs: `(M, K)` teacher targets P_t of the same patches.
        mask_weights: `(M,)` 1 / max(M_n, 1) of each patch's image (`ibot_mask_weights`).
        n_images: N_img, all global-crop images of this process's batch, masked or not.
        student_temp: tau_s.

    Returns:
        scalar; 0 (still connected to the student graph) when no patch is masked.
    """
    if student_masked_logits.shape != teacher_probs.shape or mask_weights.shape != student_masked_logits.shape[:1]:
        raise ValueError(
            f"ibot_patch_loss: student {tuple(student_masked_logits.shape)}, teacher {tuple(teacher_probs.shape)} and "
            f"weights {tuple(mask_weights.shape)} must be (M, K), (M, K), (M,)."
        )
    if n_images <= 0:
        raise ValueError(f"ibot_patch_loss: n_images must be positive, got {n_images}.")
    log_probs = F.log_softmax(student_masked_logits.float() / student_temp, dim=-1)
    per_patch = (teacher_probs.float() * log_probs).sum(dim=-1)
    return -(per_patch * mask_weights.float()).sum() / n_images


__all__ = ["ibot_mask_weights", "ibot_patch_loss"]

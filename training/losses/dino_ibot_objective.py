"""The DINOv2/CheXFound self-distillation step as a recipe `Objective`: student/teacher networks, the summed
loss terms, the EMA teacher, parameter groups and per-iteration schedules.

Total optimised per step (facebookresearch/dinov2 `train/ssl_meta_arch.py`, CheXFound weights):

    L = w_dino (dino_global + dino_local) + w_koleo sum_{global crops} KoLeo + w_ibot L_iBOT

(w_dino 1, w_koleo 0.1, w_ibot 3). The official log halves KoLeo and iBOT and drops the 3.0 weight; the terms
returned here are the optimised ones. The teacher is the student's EMA, theta_t <- m theta_t + (1 - m) theta_s,
after every optimizer step, m following a cosine 0.994 -> 1.

Distribution: every cross-process quantity (Sinkhorn sums, centres, masked-patch counts) is all-reduced inside the
target makers; iBOT masks are drawn for the *global* batch from (seed, epoch, batch index) and each process keeps its
rows, and KoLeo runs over groups of `koleo_group_size` rows, so a run gives the same losses on 1 or N processes
with the same global batch. The official code draws masks and computes KoLeo per GPU batch, which is the case
`koleo_group_size = per-GPU batch` and one process.
"""

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..masking import BlockMaskGenerator, sample_batch_masks
from ..recipe import Objective
from .dino_clstoken_loss import dino_clstoken_loss
from .dino_head import DINOHead
from .ibot_patch_loss import ibot_patch_loss
from .koleo_loss import koleo_loss
from .schedules import CosineSchedule
from .teacher_targets import TeacherTargets


class SSLNetwork(nn.Module):
    """A CheXFoundModel backbone with its DINO head and (when separate) iBOT head.

    `forward` is the student pass (through the DDP wrapper): masked global crops and local crops ->
    `{"cls_global": (2B, K), "cls_local": (n_l B, K), "patch_masked": (M, K'), "cls_features": (2B, D)}`.
    `single_call` runs global and local crops through the blocks as one padded batch with a key-padding mask
    instead of one call per crop size (the official code concatenates them with xformers' block-diagonal mask).
    """

    def __init__(self, backbone: nn.Module, dino_head: DINOHead, ibot_head: DINOHead | None, single_call: bool = False):
        super().__init__()
        self.backbone, self.dino_head, self.ibot_head = backbone, dino_head, ibot_head
        self.single_call = single_call

    @property
    def patch_head(self) -> DINOHead:
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def _encode(self, global_crops, local_crops, masks):
        """Final-normed token sequences of the global and (optionally) local crops."""
        if not (self.single_call and local_crops is not None and local_crops.shape[0]):
            tokens = self.backbone(global_crops, bool_masked_pos=masks).last_hidden_state
            local = self.backbone(local_crops).last_hidden_state if local_crops is not None and local_crops.shape[0] else None
            return tokens, local
        vit = self.backbone.vit
        tokens_g = vit.prepare_tokens(global_crops, masks)
        tokens_l = vit.prepare_tokens(local_crops)
        n_global, length = tokens_g.shape[:2]
        padded = torch.nn.functional.pad(tokens_l, (0, 0, 0, length - tokens_l.shape[1]))
        x = torch.cat([tokens_g, padded])
        keep = torch.ones(x.shape[0], length, dtype=torch.bool, device=x.device)
        keep[n_global:, tokens_l.shape[1]:] = False
        attn_mask = keep[:, None, None, :]
        for block in vit.blocks:
            x = block(x, attn_mask=attn_mask)
        x = vit.norm(x)
        return x[:n_global], x[n_global:, : tokens_l.shape[1]]

    def forward(self, global_crops, local_crops, masks, mask_indices):
        tokens, local_tokens = self._encode(global_crops, local_crops, masks)
        num_prefix = 1 + self.backbone.config.num_register_tokens
        cls_global = tokens[:, 0]
        cls_all = cls_global if local_tokens is None else torch.cat([cls_global, local_tokens[:, 0]])
        cls_logits = self.dino_head(cls_all)  # one head call over all crops
        patches = tokens[:, num_prefix:].flatten(0, 1)[mask_indices]
        return {
            "cls_global": cls_logits[: cls_global.shape[0]],
            "cls_local": cls_logits[cls_global.shape[0]:] if local_tokens is not None else None,
            "patch_masked": self.patch_head(patches),
            "cls_features": cls_global,
        }

    @torch.no_grad()
    def teacher_forward(self, global_crops, mask_indices):
        """Teacher pass on the unmasked global crops: `(cls logits (2B, K), masked-patch logits (M, K'))`."""
        tokens = self.backbone(global_crops).last_hidden_state
        num_prefix = 1 + self.backbone.config.num_register_tokens
        patches = tokens[:, num_prefix:].flatten(0, 1)[mask_indices]
        return self.dino_head(tokens[:, 0]), self.patch_head(patches)


def build_param_groups(student: nn.Module, num_layers: int, layerwise_decay: float, patch_embed_lr_mult: float) -> list[dict]:
    """AdamW groups of the official `get_params_groups_with_decay` + `fuse_params_groups`.

    lr multiplier = layerwise_decay^(L + 1 - layer_id) with layer_id 0 for the embeddings (pos/patch embed, CLS,
    registers, mask token), i + 1 for block i and L + 1 otherwise (final norm, heads); x patch_embed_lr_mult for the
    patch embedding. Weight-decay multiplier 0 for biases, norms and LayerScale gammas. Prototype layers
    (`last_layer`) get their own groups for the first-epoch freeze.
    """
    groups: dict[tuple, dict] = {}
    for name, param in student.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = num_layers + 1
        if name.startswith("backbone."):
            if any(key in name for key in (".pos_embed", ".patch_embed", ".mask_token", ".cls_token", ".reg_token")):
                layer_id = 0
            elif ".blocks." in name:
                layer_id = int(name[name.find(".blocks."):].split(".")[2]) + 1
        lr_mult = layerwise_decay ** (num_layers + 1 - layer_id)
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
        key = (lr_mult, wd_mult, "last_layer" in name)
        group = groups.setdefault(key, {"params": [], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult,
                                        "is_last_layer": key[2]})
        group["params"].append(param)
    return list(groups.values())


@dataclass
class SSLSchedules:
    """Per-iteration values (official `build_schedulers`): lr, weight decay, teacher momentum and temperature, and
    the prototype-layer lr (0 for the first `freeze_last_layer_epochs`, then the lr schedule)."""

    lr: CosineSchedule
    weight_decay: CosineSchedule
    momentum: CosineSchedule
    teacher_temp: CosineSchedule
    last_layer_lr: CosineSchedule

    @classmethod
    def build(cls, epoch_length: int, epochs: int, lr: float, min_lr: float, warmup_epochs: int, weight_decay: float,
              weight_decay_end: float, momentum: float, final_momentum: float, teacher_temp: float,
              warmup_teacher_temp: float, warmup_teacher_temp_epochs: int, freeze_last_layer_epochs: int):
        total = epochs * epoch_length
        temp_iters = min(warmup_teacher_temp_epochs, epochs) * epoch_length
        last_layer = CosineSchedule(lr, min_lr, total, warmup_epochs * epoch_length)
        last_layer.values[: freeze_last_layer_epochs * epoch_length] = 0.0
        return cls(
            lr=CosineSchedule(lr, min_lr, total, warmup_epochs * epoch_length),
            weight_decay=CosineSchedule(weight_decay, weight_decay_end, total),
            momentum=CosineSchedule(momentum, final_momentum, total),
            teacher_temp=CosineSchedule(teacher_temp, teacher_temp, temp_iters, temp_iters, warmup_teacher_temp),
            last_layer_lr=last_layer,
        )


class DINOiBOTObjective(Objective):
    """Losses, EMA teacher and schedules of one DINOv2/CheXFound run (see module docstring).

    Args:
        teacher: SSLNetwork initialised equal to the student (never trained by the optimizer).
        schedules: `SSLSchedules`.
        optimizer: the raw AdamW built on `build_param_groups`; a step pre-hook sets each group's lr / weight decay
            for the iteration and clips every student submodule's gradient norm to `clip_grad` (official per-module
            clipping; DDP / single process).
        weights: dict with dino, koleo, ibot loss weights.
        centering: "sinkhorn_knopp" or "centering".
        koleo_group_size: KoLeo over groups of this many rows of each crop (None: the whole process batch).
        dataset: has an `epoch` attribute seeding its per-sample crops (kept in the checkpoint state).
    """

    def __init__(self, teacher: SSLNetwork, schedules: SSLSchedules, optimizer, weights: dict, centering: str,
                 clip_grad: float | None, grid_size: tuple[int, int], mask_probability: float,
                 mask_ratio_min_max: tuple[float, float], student_temp: float = 0.1, koleo_group_size: int | None = None,
                 seed: int = 0, dataset=None):
        self.teacher = teacher.eval().requires_grad_(False)
        self.schedules, self.weights, self.clip_grad = schedules, weights, clip_grad
        self.dino_targets = TeacherTargets(teacher.dino_head.last_layer.weight_v.shape[0], centering)
        self.ibot_targets = TeacherTargets(teacher.patch_head.last_layer.weight_v.shape[0], centering)
        self.mask_generator = BlockMaskGenerator(grid_size)
        self.grid_size, self.mask_probability, self.mask_ratio_min_max = grid_size, mask_probability, mask_ratio_min_max
        self.student_temp, self.koleo_group_size, self.seed, self.dataset = student_temp, koleo_group_size, seed, dataset
        self.loop = self.student = None  # set by on_train_start
        optimizer.register_step_pre_hook(self._before_optimizer_step)

    # hooks -------------------------------------------------------------------------------------------------------
    def on_train_start(self, loop) -> None:
        self.loop = loop
        self.student = loop.accelerator.unwrap_model(loop.model)
        device = loop.accelerator.device
        for module in (self.teacher, self.dino_targets, self.ibot_targets):
            module.to(device)

    def on_epoch_start(self, loop, epoch: int) -> None:
        if self.dataset is not None:
            self.dataset.epoch = epoch

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        iteration = self.loop.step
        lr, last_layer_lr = self.schedules.lr[iteration], self.schedules.last_layer_lr[iteration]
        weight_decay = self.schedules.weight_decay[iteration]
        for group in optimizer.param_groups:
            group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]
            group["weight_decay"] = weight_decay * group["wd_multiplier"]
        if self.clip_grad:
            for module in (self.student.backbone, self.student.dino_head, self.student.ibot_head):
                if module is not None:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.clip_grad)

    @torch.no_grad()
    def on_step_end(self, loop, step: int) -> None:
        momentum = self.schedules.momentum[step - 1]
        teacher_params = list(self.teacher.parameters())
        student_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "dino_center": self.dino_targets.center,
                "ibot_center": self.ibot_targets.center, "epoch": getattr(self.dataset, "epoch", 0)}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.dino_targets.center.copy_(state["dino_center"])
        self.ibot_targets.center.copy_(state["ibot_center"])
        if self.dataset is not None:
            self.dataset.epoch = state["epoch"]

    # the step ----------------------------------------------------------------------------------------------------
    def batch_masks(self, n_local_images: int):
        """This process's rows of the global batch's masks, drawn from (seed, epoch, batch index)."""
        accelerator, progress = self.loop.accelerator, self.loop.progress
        processes, rank = accelerator.num_processes, accelerator.process_index
        rng = np.random.default_rng([self.seed, progress.epoch, progress.batches_in_epoch])
        batch = n_local_images // 2
        global_masks = sample_batch_masks(2 * batch * processes, self.grid_size, rng, self.mask_probability,
                                          self.mask_ratio_min_max, self.mask_generator).masks
        rows = torch.cat([torch.arange(c * batch * processes + rank * batch, c * batch * processes + (rank + 1) * batch)
                          for c in range(2)])
        masks = global_masks[rows].to(accelerator.device)
        weights = (1.0 / masks.sum(-1, dtype=torch.float32).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
        return masks, masks.flatten().nonzero().flatten(), weights

    def compute_loss(self, model, batch) -> dict[str, torch.Tensor]:
        global_crops, local_crops = batch["global_crops"], batch["local_crops"]
        n_images = global_crops.shape[0]
        masks, mask_indices, mask_weights = self.batch_masks(n_images)
        teacher_temp = self.schedules.teacher_temp[self.loop.step]
        with self.loop.accelerator.autocast():
            teacher_cls, teacher_patch = self.teacher.teacher_forward(global_crops, mask_indices)
        dino_probs = self.dino_targets(teacher_cls, teacher_temp)
        ibot_probs = self.ibot_targets(teacher_patch, teacher_temp)
        out = model(global_crops, local_crops, masks, mask_indices)
        dino_global, dino_local = dino_clstoken_loss(out["cls_global"], out["cls_local"], dino_probs, 2, self.student_temp)
        koleo = out["cls_features"].new_zeros((), dtype=torch.float32)
        if self.weights["koleo"]:
            group = self.koleo_group_size or n_images // 2
            for crop in out["cls_features"].float().chunk(2):
                parts = crop.split(group)
                koleo = koleo + sum(koleo_loss(part) for part in parts) / len(parts)
        ibot = ibot_patch_loss(out["patch_masked"], ibot_probs, mask_weights, n_images, self.student_temp)
        return {
            "dino_global": self.weights["dino"] * dino_global,
            "dino_local": self.weights["dino"] * dino_local,
            "koleo": self.weights["koleo"] * koleo,
            "ibot": self.weights["ibot"] * ibot,
        }


def make_teacher(student: SSLNetwork) -> SSLNetwork:
    """The teacher starts as an exact copy of the student (official `prepare_for_distributed_training`). It always
    runs in eval mode, so its drop path is off (the official teacher is built with drop_path_rate 0)."""
    teacher = copy.deepcopy(student).eval()
    teacher.backbone.config.drop_path_rate = 0.0
    return teacher


__all__ = ["DINOiBOTObjective", "SSLNetwork", "SSLSchedules", "build_param_groups", "make_teacher"]

"""Per-iteration schedules of DINOv2/CheXFound pretraining (lr, weight decay, teacher momentum and temperature).

facebookresearch/dinov2 `utils/utils.py` `CosineScheduler(base, final, total_iters, warmup_iters, start_warmup_value,
freeze_iters)`, whose endpoints were confirmed by running it (chexfound_dinov2.md §8):

    v(i) = 0                                             for i < F (freeze)
         = linspace(v_start, v_base, W)[i - F]           for F <= i < F + W (the warm-up *includes* v_base)
         = v_final + (v_base - v_final)(1 + cos(pi j / C)) / 2,  j = i - F - W < C = T - F - W
         = v_final                                       for i >= T

so the peak appears twice (end of warm-up, start of cosine), the cosine part never reaches v_final inside the
array, and a warm-up-only schedule (T = W, the teacher temperature 0.04 -> 0.07) reaches v_base at i = W - 1.
"""

import numpy as np


class CosineSchedule:
    """v(i) of the module docstring; index with an iteration number."""

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
    ):
        if min(total_iters, warmup_iters, freeze_iters) < 0 or warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f"CosineSchedule needs 0 <= warmup_iters + freeze_iters <= total_iters, got warmup={warmup_iters}, "
                f"freeze={freeze_iters}, total={total_iters}."
            )
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        cosine_len = total_iters - warmup_iters - freeze_iters
        steps = np.arange(cosine_len)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(cosine_len, 1)))
        self.values = np.concatenate([freeze, warmup, cosine])

    def __getitem__(self, iteration: int) -> float:
        if iteration >= self.total_iters:
            return float(self.final_value)
        return float(self.values[iteration])


__all__ = ["CosineSchedule"]

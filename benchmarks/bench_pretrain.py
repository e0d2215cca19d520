"""CheXFound (DINOv2/iBOT) pretraining step on CPU, fp32: the tiny and ViT-B/16 presets.

    python benchmarks/bench_pretrain.py            # tiny (batch 16) and ViT-B/16 224/96 (batch 2, official heads)
    python benchmarks/bench_pretrain.py --quick    # tiny only

Per preset and setting, one fresh process builds the student/teacher/heads and AdamW exactly as
`training/pretrain_chexfound.py` does and times full optimizer steps of `DINOiBOTObjective` (teacher forward,
Sinkhorn targets, student forward over 2 global + n local crops, DINO + KoLeo + iBOT, backward, per-module clipping,
AdamW, EMA) on pre-built batches, so data loading is not timed. Reported:
- steps/s and images/s (source images; each gives 2 + n crops);
- peak RSS growth over the process's state after building the model (ru_maxrss), without and with gradient
  checkpointing;
- achieved training FLOP/s (analytic: 3x the student forward + 1x the teacher forward, recomputation not counted)
  as a fraction of a 2048^3 fp32 matmul timed in the same process (the machine's practical peak at that moment);
- the student forward over global + local crops as one padded call (key-padding mask) vs one call per crop size.
The CPU is shared with other processes, so absolute figures vary between runs; the ratios are measured back to back.
"""

import argparse
import multiprocessing as mp
import resource
import statistics
import time
from types import SimpleNamespace

import torch

PRESETS = {
    "tiny": ["--config", "training/configs/pretrain_chexfound_tiny.yaml"],
    "vit-b16": ["--config", "training/configs/pretrain_chexfound_vitb16_224.yaml", "--batch_size", "2",
                "--koleo_group_size", "2"],
}
BATCH = {"tiny": 16, "vit-b16": 2}


def forward_gflops(config, size: int) -> float:
    """Analytic forward GFLOPs of one crop (2 per multiply-add) through the backbone."""
    dim, patches = config.hidden_size, (size // config.patch_size) ** 2
    tokens = 1 + config.num_register_tokens + patches
    hidden = int(dim * config.mlp_ratio) * (3 if config.use_swiglu_ffn else 2)  # SwiGLU: w1, w2, w3 (2/3 width each)
    if config.use_swiglu_ffn:
        hidden = hidden * 2 // 3
    block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + tokens * dim * hidden
    return 2 * (patches * dim * config.num_channels * config.patch_size**2 + config.num_hidden_layers * block) / 1e9


def head_gflops(head, rows: int) -> float:
    return 2 * rows * sum(p.numel() for n, p in head.named_parameters() if n.endswith("weight") or n.endswith("weight_v")) / 1e9


def measure(preset: str, checkpointing: bool, single_call: bool, steps: int, queue) -> None:
    from accelerate import Accelerator

    from cxrfm.training.losses.dino_ibot_objective import (DINOiBOTObjective, SSLSchedules, build_param_groups,
                                                           make_teacher)
    from cxrfm.training.pretrain_chexfound import PretrainArguments, build_student
    from cxrfm.training.recipe import parse_args

    torch.manual_seed(0)
    argv = [*PRESETS[preset], "--output_dir", "unused", "--gradient_checkpointing", str(checkpointing).lower(),
            "--student_single_call", str(single_call).lower()]
    args = parse_args(PretrainArguments, argv)
    student = build_student(args)
    if checkpointing:
        student.backbone.activation_checkpointing_enable()
    teacher = make_teacher(student)
    config = student.backbone.config
    schedules = SSLSchedules.build(100, 10, 1e-4, 1e-6, 1, 0.04, 0.2, 0.994, 1.0, 0.07, 0.04, 3, 1)
    optimizer = torch.optim.AdamW(build_param_groups(student, config.num_hidden_layers, 1.0, 0.2))
    grid = args.global_crops_size // config.patch_size
    objective = DINOiBOTObjective(teacher, schedules, optimizer, {"dino": 1.0, "koleo": 0.1, "ibot": 3.0},
                                  args.centering, args.clip_grad, (grid, grid), 0.5, (0.1, 0.5),
                                  koleo_group_size=args.koleo_group_size)
    loop = SimpleNamespace(accelerator=Accelerator(cpu=True), model=student, step=0,
                           progress=SimpleNamespace(epoch=0, batches_in_epoch=0))
    objective.on_train_start(loop)
    b = BATCH[preset]
    generator = torch.Generator().manual_seed(0)
    batch = {"global_crops": torch.randn(2 * b, 3, args.global_crops_size, args.global_crops_size, generator=generator),
             "local_crops": torch.randn(args.local_crops_number * b, 3, args.local_crops_size, args.local_crops_size,
                                        generator=generator)}
    probe_a, probe_b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        terms = objective.compute_loss(student, batch)
        sum(terms.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        loop.step += 1
        loop.progress.batches_in_epoch += 1
        objective.on_step_end(loop, loop.step)

    step()  # warm-up
    times, peaks = [], []
    for _ in range(steps):
        start = time.perf_counter()
        torch.mm(probe_a, probe_b)
        peaks.append(2 * 2048**3 / (time.perf_counter() - start))
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    # student forward only (with autograd), the one-call vs per-size comparison
    masks, indices, _ = objective.batch_masks(2 * b)
    forward_times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = student(batch["global_crops"], batch["local_crops"], masks, indices)
        forward_times.append(time.perf_counter() - start)
        del out
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = int(masks.sum())
    student_fwd = (2 * b * forward_gflops(config, args.global_crops_size)
                   + args.local_crops_number * b * forward_gflops(config, args.local_crops_size)
                   + head_gflops(student.dino_head, (2 + args.local_crops_number) * b) + head_gflops(student.patch_head, m))
    teacher_fwd = 2 * b * forward_gflops(config, args.global_crops_size) + head_gflops(teacher.dino_head, 2 * b)
    seconds = statistics.median(times)
    queue.put({"preset": preset, "checkpointing": checkpointing, "single_call": single_call,
               "steps_per_s": 1 / seconds, "images_per_s": b / seconds,
               "peak_rss_growth_mb": (rss_peak - rss_before) / 1024,
               "gflops_per_s": (3 * student_fwd + teacher_fwd) / seconds,
               "peak_gflops_per_s": statistics.median(peaks) / 1e9,
               "student_forward_s": statistics.median(forward_times)})


def run(preset: str, checkpointing: bool, single_call: bool, steps: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(preset, checkpointing, single_call, steps, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset only")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print("| preset | grad ckpt | student forward | steps/s | images/s | peak RSS growth (MB) | GFLOP/s | "
          "fraction of matmul peak | student forward (s) |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for preset in (["tiny"] if args.quick else ["tiny", "vit-b16"]):
        steps = args.steps if preset == "tiny" else max(2, args.steps // 2)
        for checkpointing, single_call in ((False, False), (True, False), (False, True)):
            r = run(preset, checkpointing, single_call, steps)
            rows.append(r)
            print(f"| {r['preset']} | {'on' if r['checkpointing'] else 'off'} | "
                  f"{'one padded call' if r['single_call'] else 'one call per crop size'} | {r['steps_per_s']:.3g} | "
                  f"{r['images_per_s']:.3g} | {r['peak_rss_growth_mb']:.0f} | {r['gflops_per_s']:.3g} | "
                  f"{r['gflops_per_s'] / r['peak_gflops_per_s']:.2f} | {r['student_forward_s']:.3g} |", flush=True)
    for preset in sorted({r["preset"] for r in rows}):
        per_size = next(r for r in rows if r["preset"] == preset and not r["single_call"] and not r["checkpointing"])
        single = next(r for r in rows if r["preset"] == preset and r["single_call"])
        ckpt = next(r for r in rows if r["preset"] == preset and r["checkpointing"])
        print(f"{preset}: one padded call / per-size calls forward time = "
              f"{single['student_forward_s'] / per_size['student_forward_s']:.2f}x; gradient checkpointing: "
              f"peak RSS growth {ckpt['peak_rss_growth_mb']:.0f} vs {per_size['peak_rss_growth_mb']:.0f} MB, "
              f"step time {per_size['steps_per_s'] / ckpt['steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()

"""CheXFoundModel vs the raw timm ViT vs transformers' Dinov2Model of identical size (inference, fp32, CPU).

    python benchmarks/bench_backbone.py            # ViT-B/16 and ViT-L/16 at 224, batch 8, 5 timed runs
    python benchmarks/bench_backbone.py --quick    # ViT-B/16 only, 3 timed runs

All three models are the DINOv2 default block at each size (patch 16, GELU MLP, LayerScale 1e-5, qkv bias,
LayerNorm eps 1e-6, no registers): CheXFound preset `vit-{base,large}-patch16-224`, timm `VisionTransformer`
with `init_values=1e-5`, `Dinov2Model(Dinov2Config(patch_size=16, ...))` with SDPA. Runs are interleaved
(A, B, C, B, C, A, ...) so load from other processes hits every model alike; "paired" ratios are medians
of per-round time ratios. FLOP/s use the analytic multiply-add count of one image (x2), the same for all
three models; the machine's practical peak is a 2048^3 fp32 matmul timed just before every model run, so the
efficiency column stays meaningful when other processes share the CPU.
"""

import argparse
import os
import statistics
import time

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import Dinov2Config, Dinov2Model

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel

SIZES = {"ViT-B/16": "vit-base-patch16-224", "ViT-L/16": "vit-large-patch16-224"}


class MatmulProbe:
    """fp32 GFLOP/s of one n x n @ n x n matmul (2 n^3 FLOPs): the machine's practical peak at this moment."""

    def __init__(self, n: int = 2048):
        self.n = n
        self.a, self.b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(self.a, self.b)

    def __call__(self) -> float:
        start = time.perf_counter()
        torch.mm(self.a, self.b)
        return 2 * self.n**3 / (time.perf_counter() - start) / 1e9


def vit_gflops_per_image(config: CheXFoundConfig) -> float:
    """Analytic forward GFLOPs of one image (2 per multiply-add): patch conv, and per block qkv, q k^T,
    attn @ v, proj and the two MLP matmuls over T = 1 + registers + patches tokens."""
    dim, patches = config.hidden_size, (config.image_size // config.patch_size) ** 2
    tokens = 1 + config.num_register_tokens + patches
    mlp_hidden = int(dim * config.mlp_ratio)
    patch_embed = patches * dim * config.num_channels * config.patch_size**2
    block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * mlp_hidden
    return 2 * (patch_embed + config.num_hidden_layers * block) / 1e9


def build_models(config: CheXFoundConfig) -> dict[str, torch.nn.Module]:
    timm_vit = VisionTransformer(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size,
        depth=config.num_hidden_layers, num_heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio,
        init_values=config.layerscale_value, num_classes=0,
    )
    dinov2 = Dinov2Model(Dinov2Config(
        image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        mlp_ratio=int(config.mlp_ratio), layerscale_value=config.layerscale_value, layer_norm_eps=config.layer_norm_eps,
    ))
    models = {
        "timm VisionTransformer": timm_vit,
        "CheXFoundModel": CheXFoundModel(config),
        f"transformers Dinov2Model ({dinov2.config._attn_implementation})": dinov2,
    }
    return {name: model.eval() for name, model in models.items()}


def run_once(name: str, model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one forward pass."""
    start, cpu_start = time.perf_counter(), time.process_time()
    if name.startswith("timm"):
        model.forward_features(pixel_values)
    else:
        model(pixel_values)
    return time.perf_counter() - start, time.process_time() - cpu_start


def bench_size(label: str, preset: str, batch_size: int, warmup: int, repeats: int, probe: MatmulProbe) -> None:
    config = CheXFoundConfig.from_preset(preset)
    models = build_models(config)
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size)
    times = {name: [] for name in models}
    cpu_times = {name: [] for name in models}
    peaks = {name: [] for name in models}  # matmul rate measured right before each timed run
    with torch.inference_mode():
        for _ in range(warmup):
            for name, model in models.items():
                run_once(name, model, pixel_values)
        names = list(models)
        for round_index in range(repeats):  # interleaved rounds, starting model rotated each round
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                peaks[name].append(probe())
                wall, cpu = run_once(name, models[name], pixel_values)
                times[name].append(wall)
                cpu_times[name].append(cpu)

    gflops = vit_gflops_per_image(config)
    ours = times["CheXFoundModel"]
    all_peaks = [p for values in peaks.values() for p in values]
    print(f"\n{label} at {config.image_size}x{config.image_size}, batch {batch_size}: {gflops:.1f} GFLOP/image "
          f"(analytic), {warmup} warm-up + {repeats} interleaved timed rounds; fp32 matmul during the rounds: "
          f"median {statistics.median(all_peaks):.1f} GFLOP/s (min {min(all_peaks):.1f}, max {max(all_peaks):.1f})")
    header = ("model", "params", "s/batch", "img/s", "GFLOP/s", "% matmul", "ours/this", "CPU s", "ours/this CPU")
    print("  {:<38}{:>8}{:>9}{:>8}{:>9}{:>10}{:>11}{:>8}{:>15}".format(*header))
    for name, model in models.items():
        median = statistics.median(times[name])
        images_per_s = batch_size / median
        achieved = [gflops * batch_size / t for t in times[name]]
        efficiency = statistics.median(rate / peak for rate, peak in zip(achieved, peaks[name]))
        paired = statistics.median(other / own for own, other in zip(ours, times[name]))
        paired_cpu = statistics.median(other / own for own, other in zip(cpu_times["CheXFoundModel"], cpu_times[name]))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"  {name:<38}{params:>7.1f}M{median:>9.3f}{images_per_s:>8.2f}{statistics.median(achieved):>9.1f}"
              f"{100 * efficiency:>9.0f}%{paired:>11.3f}{statistics.median(cpu_times[name]):>8.2f}{paired_cpu:>15.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ViT-B/16 only, 3 timed rounds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    probe = MatmulProbe()
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, fp32, "
          f"torch.inference_mode; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    sizes = {"ViT-B/16": SIZES["ViT-B/16"]} if args.quick else SIZES
    for label, preset in sizes.items():
        bench_size(label, preset, args.batch_size, args.warmup, repeats, probe)
    print("\n% matmul = median over runs of (achieved GFLOP/s / fp32 matmul GFLOP/s probed just before the run).\n"
          "ours/this = median over rounds of (this model's time / CheXFoundModel's time), i.e. CheXFoundModel's "
          "throughput relative to this model; the CPU variant uses this process's CPU seconds, which other "
          "processes disturb less than wall time. Goal: >= 0.97 vs timm, > 1 vs Dinov2Model.")


if __name__ == "__main__":
    main()

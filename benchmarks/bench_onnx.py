"""onnxruntime (CPU) vs torch eager on the same CheXFound backbone: images/s side by side, fp32, random weights.

    python benchmarks/bench_onnx.py                # tiny preset at 32 px and ViT-B/16 at 224, 5 timed rounds
    python benchmarks/bench_onnx.py --quick        # tiny preset only

Each model is saved, exported with `cxrfm.export_onnx.export_onnx` (outputs "pooled", dynamic batch and image size,
the dynamo exporter) and run both ways on one random batch. Runs are interleaved (torch, onnxruntime, onnxruntime,
torch, ...) so load from other processes hits both alike; "ort/torch" is the median over rounds of torch's time /
onnxruntime's time (> 1: onnxruntime is faster). Both use the same number of intra-op threads.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from cxrfm.export_onnx import export_onnx
from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel

MODELS = {"tiny": ("tiny", 32), "ViT-B/16": ("vit-base-patch16-224", 8)}  # label -> (preset, batch size)


def bench(label: str, preset: str, batch_size: int, warmup: int, repeats: int, threads: int, workdir: Path) -> dict:
    config = CheXFoundConfig.from_preset(preset)
    model = CheXFoundModel(config).eval()
    folder = workdir / preset
    model.save_pretrained(folder)
    start = time.perf_counter()
    export_onnx(folder, workdir / f"{preset}.onnx", outputs="pooled")
    export_seconds = time.perf_counter() - start

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(workdir / f"{preset}.onnx"), options, providers=["CPUExecutionProvider"])
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size,
                               generator=torch.Generator().manual_seed(0))
    feed = {"pixel_values": pixel_values.numpy()}

    def run_torch():
        with torch.inference_mode():
            return model(pixel_values).pooler_output.numpy()

    def run_ort():
        return session.run(None, feed)[0]

    max_diff = float(np.abs(run_torch() - run_ort()).max())
    for _ in range(warmup):
        run_torch(), run_ort()
    times = {"torch": [], "ort": []}
    runners = {"torch": run_torch, "ort": run_ort}
    for round_index in range(repeats):
        for name in (("torch", "ort") if round_index % 2 == 0 else ("ort", "torch")):
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    torch_ips = batch_size / statistics.median(times["torch"])
    ort_ips = batch_size / statistics.median(times["ort"])
    ratio = statistics.median(t / o for t, o in zip(times["torch"], times["ort"]))
    return dict(label=label, size=config.image_size, batch=batch_size, torch=torch_ips, ort=ort_ips, ratio=ratio,
                diff=max_diff, export=export_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, threads {args.threads}, fp32; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    models = {"tiny": MODELS["tiny"]} if args.quick else MODELS
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for label, (preset, batch_size) in models.items():
            rows.append(bench(label, preset, batch_size, args.warmup, args.repeats, args.threads, Path(workdir)))
    print("\n| model | input | batch | torch eager img/s | onnxruntime img/s | ort/torch | max abs diff | export s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['label']} | {row['size']}x{row['size']} | {row['batch']} | {row['torch']:.1f} | {row['ort']:.1f} | "
              f"{row['ratio']:.2f} | {row['diff']:.1e} | {row['export']:.0f} |")
    print("\nort/torch = median over interleaved rounds of (torch time / onnxruntime time); > 1: onnxruntime faster.")


if __name__ == "__main__":
    main()

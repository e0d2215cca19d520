"""The main job on built-in synthetic data: phantom CXRs -> processor -> tiny CheXFound embeddings
-> Hub-layout save -> reload -> same embeddings -> GLoRI trained on cached features -> evaluation
table with bootstrap CIs. Prints shapes and timings.

    make demo            # or: .venv/bin/python examples/demo.py --num-images 96 --image-size 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoImageProcessor, AutoModel  # noqa: E402

import cxrfm.training  # noqa: E402
from cxrfm.modeling import CheXFoundConfig, CheXFoundModel  # noqa: E402
from cxrfm.processing import CXRImageProcessor  # noqa: E402
from cxrfm.processing.datasets.phantom import load_phantom  # noqa: E402


@contextmanager
def timed(label: str):
    start = time.perf_counter()
    yield
    print(f"  {label:<44s} {time.perf_counter() - start:7.2f} s")


def embed(model, processor, images, batch_size: int) -> torch.Tensor:
    """Pooled (final-normed CLS) embeddings for a list of PIL images."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pixel_values = processor(images[start:start + batch_size], return_tensors="pt")["pixel_values"]
            chunks.append(model(pixel_values=pixel_values).pooler_output)
    return torch.cat(chunks)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--preset", default="tiny", help="CheXFoundConfig preset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    print("cxrfm demo: tiny CheXFound on the synthetic phantom set")
    with timed(f"phantom set ({args.num_images} images, {args.image_size} px)"):
        data = load_phantom(num_images=args.num_images, image_size=args.image_size, seed=0)
    print("  splits:", {name: split.num_rows for name, split in data.items()})

    config = CheXFoundConfig.from_preset(args.preset, image_size=args.image_size)
    model = CheXFoundModel(config).eval()
    processor = CXRImageProcessor(size={"shortest_edge": args.image_size},
                                  crop_size={"height": args.image_size, "width": args.image_size})
    print(f"  model: preset={args.preset!r} hidden={config.hidden_size} layers={config.num_hidden_layers} "
          f"registers={config.num_register_tokens} params={sum(p.numel() for p in model.parameters()):,}")

    images = data["test"]["image"]
    with timed(f"preprocess + embed {len(images)} test images"):
        embeddings = embed(model, processor, images, args.batch_size)
    print("  embeddings:", tuple(embeddings.shape))
    pixel_values = processor(images[:2], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        layers = model.get_intermediate_layers(pixel_values, n=min(4, config.num_hidden_layers))
    print(f"  last {len(layers)} layers: patch tokens {tuple(layers[0][0].shape)}, CLS {tuple(layers[0][1].shape)}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or Path(tmp) / "chexfound-demo")
        with timed("save_pretrained (model + processor + code)"):
            model.save_pretrained(out)
            processor.save_pretrained(out)
        print("  saved:", sorted(p.name for p in out.iterdir()))
        with timed("reload with Auto classes"):
            reloaded = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
            reprocessor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
        again = embed(reloaded, reprocessor, images, args.batch_size)
        max_diff = (again - embeddings).abs().max().item()
        print(f"  reloaded embeddings equal the originals: max |diff| = {max_diff:.2e}")
        if max_diff > 1e-5:
            raise SystemExit("reloaded model disagrees with the original")

        print("GLoRI on cached tiny-CheXFound features (training/configs/glori_tiny.yaml)")
        from cxrfm.training.train_glori import main as train_glori

        config_path = Path(cxrfm.training.__file__).parent / "configs" / "glori_tiny.yaml"
        with timed("feature cache + learning-rate grid + retrain"):
            results = train_glori(["--config", str(config_path), "--output_dir", str(Path(tmp) / "glori")])
        # train_glori prints the test table with its CIs; the demo adds what was selected.
        macro = results["test"]["macro"]
        print(f"  best learning rate on validation: {results['selection']['best_learning_rate']}; "
              f"test macro AUROC {macro['auroc']:.3f} (95% CI {macro['auroc_ci'][0]:.3f}-{macro['auroc_ci'][1]:.3f})")
    print("done")


if __name__ == "__main__":
    main()

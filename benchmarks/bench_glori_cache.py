"""GLoRI training from the feature cache vs recomputing backbone features every epoch, side by side.

Same backbone, same images, same heads (the official grid: one head per learning rate), same optimizer and number of
epochs. "recompute" runs the frozen backbone on every batch of every epoch (what augmentation requires; images are
preprocessed once and kept in memory, so only the backbone is timed); "cached" extracts features once into the
on-disk cache (timed separately, paid once) and trains from the memory-mapped shards.

    python benchmarks/bench_glori_cache.py                        # tiny backbone, 64 px phantom, 256 images
    python benchmarks/bench_glori_cache.py --backbone-preset vit-small-patch16-224 --image-size 224 --num-images 64
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from cxrfm.modeling import CheXFoundConfig, CheXFoundModel, GLoRIForMultiLabel
from cxrfm.modeling.chexfound.modeling_glori import masked_multilabel_bce_loss
from cxrfm.processing import CXRImageProcessor
from cxrfm.processing.datasets.phantom import load_phantom
from cxrfm.processing.labels import CXR_LT_40
from cxrfm.training.feature_cache import build_feature_cache
from cxrfm.training.train_glori import OFFICIAL_LEARNING_RATES, HeadGrid, rate_name

LABELS = ["Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity", "Pleural Effusion", "Support Devices"]


def train_epochs(model, batches, epochs: int, num_heads: int, extract: bool) -> float:
    """Seconds for `epochs` of AdamW on a grid of fresh heads; `extract` runs the backbone on every batch."""
    torch.manual_seed(0)
    rates = OFFICIAL_LEARNING_RATES[:num_heads]
    grid = HeadGrid({rate_name(lr): model.new_head() for lr in rates}).train()
    optimizer = torch.optim.AdamW([{"params": h.parameters(), "lr": lr} for h, lr in zip(grid.heads.values(), rates)],
                                  weight_decay=1e-4)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches:
            if extract:
                pixel_values, labels = batch
                with torch.no_grad():
                    patch_tokens, cls_tokens = model.extract_backbone_features(pixel_values)
            else:
                patch_tokens, cls_tokens, labels = batch
            logits = grid(patch_tokens.float(), cls_tokens.float())
            loss = masked_multilabel_bce_loss(logits, labels.expand_as(logits))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone-preset", default="tiny", help="CheXFound preset (random weights)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--heads", type=int, default=13, help="grid size (official: 13)")
    parser.add_argument("--decoder-dim", type=int, default=64, help="GLoRI width (paper: 768)")
    parser.add_argument("--ffn-dim", type=int, default=128, help="GLoRI FFN width (paper: 2048)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides = dict(image_size=args.image_size, patch_size=args.patch_size)
    if args.backbone_preset == "tiny":  # 4 blocks for the last-4 recipe; width 96 holds an 8 x 8 x 3 patch
        overrides.update(num_hidden_layers=4, hidden_size=96, num_attention_heads=2)
    torch.manual_seed(0)
    backbone = CheXFoundModel(CheXFoundConfig.from_preset(args.backbone_preset, **overrides)).eval()
    model = GLoRIForMultiLabel.from_backbone(backbone, id2label=dict(enumerate(LABELS)), decoder_dim=args.decoder_dim,
                                             ffn_dim=args.ffn_dim).eval()
    model.backbone.requires_grad_(False)
    processor = CXRImageProcessor(size={"shortest_edge": args.image_size},
                                  crop_size={"height": args.image_size, "width": args.image_size})

    train = load_phantom(args.num_images, 64, seed=0, split_fractions=(1.0, 0.0, 0.0), with_masks=False)["train"]
    images = [row["image"] for row in train]
    labels = torch.tensor(np.asarray(train.with_format("numpy")[:]["labels"])[:, [CXR_LT_40.index(n) for n in LABELS]])
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache, _ = build_feature_cache(Path(cache_dir) / "bench", images,
                                       lambda batch: processor(batch, return_tensors="pt")["pixel_values"],
                                       model.extract_backbone_features, args.batch_size, "float16", show_progress=False)
        build_seconds = time.perf_counter() - start
        cached_rows = [(*cache[i], labels[i]) for i in range(len(cache))]  # read through the memory map
        cached_batches = DataLoader(cached_rows, batch_size=args.batch_size, shuffle=True,
                                    generator=torch.Generator().manual_seed(0))
        image_batches = DataLoader(TensorDataset(pixel_values, labels), batch_size=args.batch_size, shuffle=True,
                                   generator=torch.Generator().manual_seed(0))
        cached_seconds = train_epochs(model, cached_batches, args.epochs, args.heads, extract=False)
        recompute_seconds = train_epochs(model, image_batches, args.epochs, args.heads, extract=True)

    config = model.config.backbone_config
    print(f"GLoRI (dim {args.decoder_dim}, FFN {args.ffn_dim}) x {args.heads} heads, {args.epochs} epochs, {len(images)} images of {args.image_size} px, backbone "
          f"{args.backbone_preset} (D={config.hidden_size}, {config.num_hidden_layers} blocks, patch {config.patch_size}), "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'mode':<34}{'seconds':>10}{'s/epoch':>10}")
    print(f"{'recompute backbone every epoch':<34}{recompute_seconds:>10.2f}{recompute_seconds / args.epochs:>10.3f}")
    print(f"{'from cache (training only)':<34}{cached_seconds:>10.2f}{cached_seconds / args.epochs:>10.3f}")
    print(f"{'  + one-off cache build':<34}{build_seconds:>10.2f}")
    print(f"speed-up, training only: {recompute_seconds / cached_seconds:.1f}x; "
          f"including the cache build: {recompute_seconds / (cached_seconds + build_seconds):.1f}x")


if __name__ == "__main__":
    main()

"""U-Net decoder training from cached frozen-encoder features vs recomputing the encoder every step, side by side.

Same encoder, images, decoder initialisation, optimizer and epochs. "recompute" runs the frozen encoder on every
batch of every epoch (what augmentation requires); "cached" runs it once over the training images (timed
separately, paid once) and trains the decoder from the stored features. Both modes give the same decoder update
for the same batch, so only the time differs.

    python benchmarks/bench_dense_cache.py                                        # tiny CheXFound, 64 px
    python benchmarks/bench_dense_cache.py --preset vit-small-patch16-224 --image-size 224 --num-images 48
"""

import argparse
import tempfile
import time

import torch

from cxrfm.modeling.chexfound import CheXFoundConfig, CheXFoundModel
from cxrfm.processing import CXRImageProcessor
from cxrfm.processing.datasets import get_label_names
from cxrfm.processing.datasets.phantom import load_phantom
from cxrfm.training.dense_encoders import load_frozen_encoder
from cxrfm.training.dense_transfer import CachedFeaturesDataset, DenseTransferDataset, cache_encoder_features, collate_dense
from cxrfm.training.transfer_segmentation import FrozenEncoderUnet, segmentation_loss


def train_images_per_second(model, dataset, epochs: int, batch_size: int) -> float:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_dense)
    batches = [batch for batch in loader]  # decode and collate outside the timed loop in both modes
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in batches:
            loss = sum(segmentation_loss(model(batch["pixel_values"], batch.get("encoder_features")), batch["masks"],
                                         "dice_bce").values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return epochs * len(dataset) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)

    folder = tempfile.mkdtemp()
    overrides = {"image_size": args.image_size}
    if args.preset == "tiny":
        overrides.update(patch_size=8, num_hidden_layers=4)
    CheXFoundModel(CheXFoundConfig.from_preset(args.preset, **overrides)).save_pretrained(folder)
    CXRImageProcessor(size=args.image_size, crop_size=args.image_size).save_pretrained(folder)
    encoder = load_frozen_encoder(folder)
    splits = load_phantom(num_images=args.num_images, image_size=max(64, args.image_size), seed=0, with_masks=True)
    dataset = DenseTransferDataset(splits["train"], ["Cardiomegaly"], get_label_names(splits["train"]),
                                   args.image_size, encoder)
    for i in range(len(dataset)):  # decode once, so neither mode pays for decoding
        dataset.sample(i)

    torch.manual_seed(0)
    recompute = train_images_per_second(FrozenEncoderUnet(encoder, 1), dataset, args.epochs, args.batch_size)
    start = time.perf_counter()
    cached_set = CachedFeaturesDataset(dataset, cache_encoder_features(encoder, dataset, args.batch_size))
    build_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    cached = train_images_per_second(FrozenEncoderUnet(encoder, 1), cached_set, args.epochs, args.batch_size)
    total_cached = args.epochs * len(dataset) / (args.epochs * len(dataset) / cached + build_seconds)

    print(f"U-Net decoder on frozen CheXFound {args.preset} @{args.image_size}px, {len(dataset)} images x "
          f"{args.epochs} epochs, batch {args.batch_size}, 2 threads")
    print(f"{'mode':<34}{'train img/s':>12}")
    print(f"{'recompute encoder every step':<34}{recompute:>12.1f}")
    print(f"{'cached features':<34}{cached:>12.1f}")
    print(f"{'cached incl. the one-off build':<34}{total_cached:>12.1f}   (build {build_seconds:.1f} s)")
    print(f"ratio cached / recompute: {cached / recompute:.2f}x ({total_cached / recompute:.2f}x including the build)")


if __name__ == "__main__":
    main()

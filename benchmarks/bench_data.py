"""Data-pipeline throughput: decode + preprocess of CXRs from 256 x 256 to 3000 x 3000 through cxrfm (the
`cxrfm embed` file reader and a `datasets` loader), beside TorchXRayVision's own pipeline on the same files.

Files (written to a temporary folder, never downloaded): ``--num-images`` synthetic radiograph-like
images, stored twice, as 16-bit grey PNGs in the ChestX-ray14 layout and as 12-bit DICOMs
(MONOCHROME2, uncompressed) in the VinDr-CXR layout.

Pipelines, both ending in a (C, 512, 512) float tensor per image:

- cxrfm: ``load_nih`` / ``load_vindr`` -> ``Image()`` lazy decode (DICOM through ``load_cxr_image``)
  -> ``CXRImageProcessor`` (resize shortest edge 512 bicubic+antialias, centre crop 512, min-max,
  ImageNet normalisation, 3 channels) in the DataLoader ``collate_fn``.
- TorchXRayVision 1.5.x: PNG: ``skimage.io.imread`` -> ``xrv.utils.normalize(img, 65535)`` ->
  ``XRayCenterCrop`` -> ``XRayResizer(512)`` (its ``NIH_Dataset`` assumes 8-bit files, so its steps
  are applied to the 16-bit PNGs directly); DICOM: ``xrv.datasets.VinDr_Dataset`` (pydicom, modality
  LUT, windowing) with the same transforms.

- cxrfm embed: the file paths themselves through ``cxrfm.commands._images.ImageFiles`` (what ``cxrfm embed`` /
  ``predict`` run: ``CXRImageProcessor`` on each path in the DataLoader workers).

Each is timed single-process (``num_workers=0``) and with ``--workers`` DataLoader workers, after one
warm-up batch, for every ``--sizes`` entry. Single-process rows also give images per CPU-second of the process
(``time.process_time``), which other jobs on a shared machine disturb far less than wall time.
Run: ``python benchmarks/bench_data.py [--sizes 256,512,1024,2048,3000] [--num-images 16] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrfm.processing.datasets import VINDR_28, load_nih, load_vindr
from cxrfm.processing.image_processing_cxr import CXRImageProcessor

OUTPUT_SIZE = 512


def synthetic_radiograph(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth body-like intensity field + fine noise, 12-bit range (compresses like a real CXR)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.55) / 0.45) ** 2))
    lungs = np.exp(-(((np.abs(x - 0.5) - 0.17) / 0.1) ** 2 + ((y - 0.45) / 0.22) ** 2))
    image = 2600 * body - 1500 * lungs + 700 + rng.normal(0, 30, (size, size))
    return np.clip(image, 0, 4095).astype(np.uint16)


def write_files(folder: Path, count: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    nih, vindr = folder / "nih", folder / "vindr"
    (nih / "images").mkdir(parents=True)
    (vindr / "train").mkdir(parents=True)
    (vindr / "annotations").mkdir(parents=True)
    names, ids = [], []
    for index in range(count):
        pixels = synthetic_radiograph(rng, size)
        name = f"{index:08d}_000.png"
        Image.fromarray(pixels * 16).save(nih / "images" / name)  # 12 -> 16 bit, as scanners export
        names.append(name)
        image_id = f"img{index:05d}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dicom = FileDataset(str(vindr / "train" / f"{image_id}.dicom"), {}, file_meta=meta, preamble=b"\0" * 128)
        dicom.SOPClassUID, dicom.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
        dicom.Modality, dicom.PhotometricInterpretation = "DX", "MONOCHROME2"
        dicom.Rows, dicom.Columns = pixels.shape
        dicom.SamplesPerPixel, dicom.BitsAllocated, dicom.BitsStored, dicom.HighBit = 1, 16, 12, 11
        dicom.PixelRepresentation = 0
        dicom.PixelData = pixels.tobytes()
        dicom.save_as(str(vindr / "train" / f"{image_id}.dicom"), enforce_file_format=True)
        ids.append(image_id)
    pd.DataFrame({
        "Image Index": names, "Finding Labels": "No Finding", "Follow-up #": 0, "Patient ID": range(count),
        "Patient Age": 50, "Patient Gender": "F", "View Position": "PA",
    }).to_csv(nih / "Data_Entry_2017_v2020.csv", index=False)
    (nih / "train_val_list.txt").write_text("")
    (nih / "test_list.txt").write_text("\n".join(names))
    labels = pd.DataFrame({"image_id": ids, "rad_ID": "R1"})
    for label in VINDR_28:
        labels[label] = int(label == "No finding")
    labels.to_csv(vindr / "annotations" / "image_labels_train.csv", index=False)
    pd.DataFrame({"image_id": ids, "class_name": "No finding", "class_id": 14, "rad_id": "R1", "x_min": np.nan,
                  "y_min": np.nan, "x_max": np.nan, "y_max": np.nan}).to_csv(vindr / "kaggle_train.csv", index=False)
    return nih, vindr


class _ProcessorCollate:
    def __init__(self, processor: CXRImageProcessor):
        self.processor = processor

    def __call__(self, rows: list[dict]) -> torch.Tensor:
        return self.processor(images=[row["image"] for row in rows], return_tensors="pt")["pixel_values"]


class _XRVPngDataset(torch.utils.data.Dataset):
    """TorchXRayVision's per-sample steps on 16-bit PNGs (imread -> normalize -> crop -> resize)."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        import skimage.io
        import torchxrayvision as xrv

        image = xrv.utils.normalize(skimage.io.imread(self.paths[index]), maxval=65535, reshape=True)
        return {"img": self.transform(image)}


def _xrv_collate(rows: list[dict]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(row["img"]) for row in rows])


class _EmbedCollate:
    """What `cxrfm embed` does with a batch: stack the workers' grey planes, normalise them into channels."""

    def __init__(self, finish):
        self.finish = finish

    def __call__(self, items) -> torch.Tensor:
        return self.finish(torch.stack([pixels for _, pixels, _ in items]))


def images_per_second(dataset, collate, batch_size: int, workers: int) -> tuple[float, float | None]:
    """(images per wall second, images per CPU second of this process or None with workers)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                         persistent_workers=workers > 0)
    iterator = iter(loader)
    warm = next(iterator)  # worker start-up and first-call costs are not throughput
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    for batch in iterator:
        count += len(batch)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if count == 0:
        raise ValueError(f"only one batch of {len(warm)} images: raise --num-images above --batch-size.")
    return count / elapsed, (count / cpu if workers == 0 else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--sizes", default="256,512,1024,2048,3000", help="comma-separated input sizes (square)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # xrv uses pydicom's deprecated handler module
    torch.set_num_threads(1)  # one core per process: single-process vs workers compares like for like

    import torchvision
    import torchxrayvision as xrv

    from cxrfm.commands._images import ImageFiles, split_normalization

    processor = CXRImageProcessor()
    worker_processor, finish = split_normalization(processor)
    embed_collate = _EmbedCollate(finish)
    xrv_transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(OUTPUT_SIZE)])
    print(f"{args.num_images} images per size -> {OUTPUT_SIZE}x{OUTPUT_SIZE}, batch {args.batch_size}, torch threads 1 "
          "per process; img/s wall (img per CPU-s of the process, single-process rows)")
    print(f"{'size':>5} {'format':<6}{'workers':>8}{'cxrfm embed':>20}{'cxrfm loader':>20}{'xrv':>20}"
          f"{'embed/xrv':>11}{'(CPU)':>7}")
    for size in [int(value) for value in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            nih, vindr = write_files(Path(folder), args.num_images, size)
            files = {"PNG16": sorted((nih / "images").glob("*.png")), "DICOM": sorted((vindr / "train").glob("*.dicom"))}
            loaders = {
                "PNG16": load_nih(nih, validation_fraction=0.0)["test"],
                "DICOM": load_vindr(vindr, splits=("train",), validation_fraction=0.0)["train"],
            }
            theirs = {
                "PNG16": _XRVPngDataset([str(p) for p in files["PNG16"]], xrv_transform),
                "DICOM": xrv.datasets.VinDr_Dataset(imgpath=str(vindr / "train"),
                                                    csvpath=str(vindr / "kaggle_train.csv"), transform=xrv_transform),
            }
            for name in ("PNG16", "DICOM"):
                for workers in (0, args.workers):
                    embed = images_per_second(ImageFiles(files[name], worker_processor), embed_collate,
                                              args.batch_size, workers)
                    loader = images_per_second(loaders[name], _ProcessorCollate(processor), args.batch_size, workers)
                    other = images_per_second(theirs[name], _xrv_collate, args.batch_size, workers)

                    def cell(rate):
                        return f"{rate[0]:.1f}" + (f" ({rate[1]:.1f})" if rate[1] else "")

                    cpu_ratio = f"{embed[1] / other[1]:.2f}" if embed[1] else ""
                    print(f"{size:>5} {name:<6}{workers:>8}{cell(embed):>20}{cell(loader):>20}{cell(other):>20}"
                          f"{embed[0] / other[0]:>11.2f}{cpu_ratio:>7}", flush=True)


if __name__ == "__main__":
    main()

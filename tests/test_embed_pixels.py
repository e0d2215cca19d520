"""The decoding/preprocessing fast path (in-place arithmetic, one min/max pass, float32 DICOM scaling where it is
exact) gives bit-identical pixel values to the documented operation sequence written out plainly here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxrfm.processing import CXRImageProcessor
from dicom_fixtures import make_dicom, save_dicom


def reference_grey(path):
    """Plain reading: DICOM through pydicom's LUTs in float64, PNG/JPEG through PIL, unit scale by dtype."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_windowing

    if str(path).endswith(".dcm"):
        ds = pydicom.dcmread(path)
        values = apply_modality_lut(ds.pixel_array, ds)
        bits = int(ds.BitsStored)
        low, high = (0.0, 2.0**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
        if "RescaleSlope" in ds:
            low, high = sorted((low * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                                high * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
        if "WindowCenter" in ds:
            values = apply_windowing(values, ds)
        grey = (values.astype(np.float64) - low) / (high - low)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            grey = 1.0 - grey
        return grey.astype(np.float32)
    array = np.asarray(Image.open(path))
    if array.ndim == 3:
        array = array[..., 0]  # the fixtures' colour images are grey stored as RGB
    return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)


def reference_pixels(grey, side, mean, std):
    image = torch.from_numpy(grey)[None, None]
    height, width = grey.shape
    short, long = min(height, width), max(height, width)
    size = (side, int(side * long / short)) if height <= width else (int(side * long / short), side)
    if tuple(image.shape[-2:]) != size:
        low, high = image.min().clamp(max=0.0), image.max().clamp(min=1.0)
        image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(low, high)
    top, left = int(round((image.shape[-2] - side) / 2.0)), int(round((image.shape[-1] - side) / 2.0))
    image = image[..., top:top + side, left:left + side]
    image = (image - image.min()) / (image.max() - image.min())
    image = image[0].expand(len(mean), -1, -1)
    return ((image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).contiguous()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("pixels"), np.random.default_rng(0)
    paths = []
    for shape in [(64, 64), (48, 80), (130, 97), (300, 300)]:  # up-, no and down-sampling to 64, non-square
        paths.append(root / f"p16_{shape[0]}x{shape[1]}.png")
        Image.fromarray(rng.integers(0, 65536, shape, dtype=np.uint16)).save(paths[-1])
    paths.append(root / "p8.png")
    Image.fromarray(rng.integers(0, 256, (70, 90), dtype=np.uint8)).save(paths[-1])
    paths.append(root / "rgb.png")
    Image.fromarray(np.repeat(rng.integers(0, 256, (66, 64, 1), dtype=np.uint8), 3, axis=2)).save(paths[-1])
    dicoms = {"m2": {}, "m1": {"photometric": "MONOCHROME1"}, "rescale": {"RescaleSlope": 2, "RescaleIntercept": -100},
              "window": {"WindowCenter": 2000, "WindowWidth": 1500}, "bits16": {"bits_stored": 16}}
    for name, options in dicoms.items():
        paths.append(root / f"{name}.dcm")
        high = 65536 if options.get("bits_stored") == 16 else 4096
        save_dicom(make_dicom(rng.integers(0, high, (72, 64)), **options), paths[-1])
    return paths


def test_processor_pixels_equal_the_plain_operation_sequence(files):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    processor = CXRImageProcessor(size=64, crop_size=64, image_mean=mean, image_std=std)
    for path in files:
        expected = reference_pixels(reference_grey(str(path)), 64, mean, std)
        got = processor(str(path), return_tensors="pt")["pixel_values"][0]
        assert torch.equal(got, expected), (path.name, (got - expected).abs().max())


def test_nan_and_constant_inputs_are_still_refused():
    processor = CXRImageProcessor(size=8, crop_size=8)
    with pytest.raises(ValueError, match="1 of 100 pixels are NaN or infinite"):
        processor(np.where(np.eye(10) * np.arange(10) == 3, np.nan, 0.5).astype(np.float32))
    with pytest.raises(ValueError, match="the image is constant"):
        processor(np.full((10, 10), 7, dtype=np.uint16))


@pytest.mark.parametrize("options", [{}, {"size": 64, "crop_size": 64, "image_mean": [0.5], "image_std": [0.25]},
                                     {"num_channels": 1, "image_mean": [0.3], "image_std": [0.2]}])
def test_embed_workers_send_grey_planes_and_normalise_the_batch_identically(files, options):
    from cxrfm.commands._images import split_normalization

    processor = CXRImageProcessor(**options)
    worker_processor, finish = split_normalization(processor)
    assert worker_processor.num_channels == 1 and worker_processor.do_normalize is False
    paths = [str(path) for path in files[:3]]
    planes = torch.stack([worker_processor(path, return_tensors="pt")["pixel_values"][0] for path in paths])
    assert torch.equal(finish(planes), processor(paths, return_tensors="pt")["pixel_values"])

"""CXRImageProcessor and the CXR readers: real files (16-bit PNG, JPEG, DICOM built with pydicom),
hand-computed pixel values, geometry, normalisation, save/load, and every bad-input error."""

import ast
import io
import json
import logging
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfm.processing import CXRImageProcessor
from cxrfm.processing.image_processing_cxr import load_cxr_image, read_dicom, resize_grey

pydicom = pytest.importorskip("pydicom")
from dicom_fixtures import make_dicom, save_dicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SOURCE_FILE = Path(__file__).resolve().parents[1] / "processing" / "image_processing_cxr.py"


# ------------------------------------------------------------------ fixture builders


def write_png(path, array):
    """Write a real PNG with Pillow: uint8 -> 8-bit, uint16 (H, W) -> 16-bit grey (mode I;16)."""
    Image.fromarray(array).save(path, format="PNG")
    return path


def png16_colour_bytes(rgb16):
    """A 16-bit RGB PNG written by hand (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[row].astype(">u2").tobytes() for row in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def voi_lut_item(descriptor, data):
    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUTDescriptor (US or SS)
    item.add_new(0x00283006, "US", list(data))  # LUTData (US or OW)
    return item


def identity_processor(**overrides):
    """Only reading: no resize, crop, min-max or normalisation; 1 channel."""
    settings = dict(do_resize=False, do_center_crop=False, do_minmax_rescale=False, do_normalize=False, num_channels=1)
    settings.update(overrides)
    return CXRImageProcessor(**settings)


# ------------------------------------------------------------------ reading: PNG / JPEG


def test_16bit_png_keeps_full_precision(tmp_path):
    values = np.array([[0, 200, 255, 256], [1000, 30000, 40000, 65535]], dtype=np.uint16)
    path = write_png(tmp_path / "x16.png", values)
    assert Image.open(path).mode == "I;16"
    grey, meta = load_cxr_image(path, return_metadata=True)
    assert grey.dtype == np.float32 and grey.shape == (2, 4)
    np.testing.assert_array_equal(grey, values.astype(np.float32) / np.float32(65535))
    # No 8-bit saturation: values above 255 stay distinct and keep their ratios.
    assert len(np.unique(grey)) == values.size
    assert grey[1, 2] / grey[1, 1] == pytest.approx(40000 / 30000, rel=1e-6)
    assert meta["value_range"] == (0.0, 65535.0)
    # Pillow versions that decode 16-bit grey PNGs as int32 mode "I" get the same scale.
    as_int32 = Image.open(path).convert("I")
    as_int32.format = "PNG"
    np.testing.assert_array_equal(load_cxr_image(as_int32), grey)
    # Through the processor too (str path, identity settings).
    pixel_values = identity_processor()(str(path), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(pixel_values[0, 0], values / np.float32(65535))


def test_8bit_png_and_jpeg(tmp_path):
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # (16, 64) smooth ramp
    png = load_cxr_image(write_png(tmp_path / "x8.png", ramp))
    np.testing.assert_array_equal(png, ramp / np.float32(255))
    Image.fromarray(ramp).save(tmp_path / "x.jpg", quality=95)
    jpeg = load_cxr_image(tmp_path / "x.jpg")
    assert jpeg.shape == ramp.shape
    assert np.abs(jpeg - ramp / 255.0).mean() < 2 / 255  # lossy, but the same picture


def test_16bit_colour_png_warns_about_pillow_8bit_decoding(tmp_path, caplog):
    rgb = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb[..., :] = np.array([[1000, 30000], [40000, 65535]], dtype=np.uint16)[..., None]
    path = tmp_path / "rgb16.png"
    path.write_bytes(png16_colour_bytes(rgb))
    with caplog.at_level(logging.WARNING):
        grey = load_cxr_image(path)
    assert "16-bit colour or grey+alpha PNG" in caplog.text and "rgb16.png" in caplog.text
    # Pillow keeps the high byte: order preserved at 8-bit precision.
    np.testing.assert_array_equal(grey, (rgb[..., 0] >> 8) / np.float32(255))


def test_grey_rgb_rgba_give_identical_pixel_values(rng):
    grey = rng.integers(0, 256, size=(40, 56), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, rng.integers(0, 256, size=(40, 56, 1), dtype=np.uint8)], axis=-1)
    processor = CXRImageProcessor(size=24, crop_size=24)
    inputs = [
        grey,
        rgb,
        rgba,
        Image.fromarray(grey),
        Image.fromarray(rgb),
        Image.fromarray(rgba, mode="RGBA"),
        torch.from_numpy(rgb).permute(2, 0, 1),  # (3, H, W) tensor, channels-first
        grey[..., None],  # (H, W, 1)
    ]
    batch = processor(inputs, return_tensors="pt")["pixel_values"]
    assert batch.shape == (len(inputs), 3, 24, 24)
    for index in range(1, len(inputs)):
        torch.testing.assert_close(batch[index], batch[0], rtol=0, atol=0, msg=f"input {index}")


def test_colour_image_uses_bt601_luma():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 100, 100]]], dtype=np.uint8)
    grey = load_cxr_image(rgb)
    np.testing.assert_allclose(grey, [[0.299, 0.587], [0.114, 100 / 255]], rtol=1e-6)


def test_array_scales_and_layouts():
    values = np.array([[0, 65535], [32768, 1]], dtype=np.uint16)
    np.testing.assert_array_equal(load_cxr_image(values), values / np.float32(65535))
    np.testing.assert_array_equal(load_cxr_image(torch.from_numpy(values.astype(np.int32))), values.astype(np.float32))
    floats = np.array([[-3.5, 2.0], [0.25, 1e4]], dtype=np.float64)
    np.testing.assert_array_equal(load_cxr_image(floats), floats.astype(np.float32))  # floats: unchanged
    np.testing.assert_array_equal(load_cxr_image(torch.tensor([[0, 255]], dtype=torch.uint8)), [[0.0, 1.0]])
    np.testing.assert_array_equal(load_cxr_image(torch.tensor([[0.5]], dtype=torch.bfloat16)), [[0.5]])
    # Ambiguous (3, 2, 3): numpy is read channels-last, torch channels-first, unless told.
    cube = np.arange(18, dtype=np.float32).reshape(3, 2, 3)
    assert load_cxr_image(cube).shape == (3, 2)
    assert load_cxr_image(torch.from_numpy(cube)).shape == (2, 3)
    assert load_cxr_image(cube, input_data_format="channels_first").shape == (2, 3)


def test_datasets_image_dict_and_bytes(tmp_path):
    values = np.array([[7, 65000]], dtype=np.uint16)
    path = write_png(tmp_path / "d.png", values)
    expected = values / np.float32(65535)
    np.testing.assert_array_equal(load_cxr_image(path.read_bytes()), expected)
    np.testing.assert_array_equal(load_cxr_image({"bytes": path.read_bytes(), "path": None}), expected)
    np.testing.assert_array_equal(load_cxr_image({"bytes": None, "path": str(path)}), expected)


# ------------------------------------------------------------------ reading: DICOM


STORED = np.array([[0, 1000, 1548, 1549], [2048, 2547, 2548, 4095]], dtype=np.uint16)


def test_dicom_monochrome2_and_monochrome1_12bit(tmp_path):
    path = save_dicom(make_dicom(STORED), tmp_path / "m2.dcm")
    grey, meta = read_dicom(path)
    np.testing.assert_allclose(grey, STORED / 4095.0, rtol=0, atol=1e-7)  # 12-bit: [0, 4095] -> [0, 1]
    assert meta["value_range"] == (0.0, 4095.0) and not meta["inverted"] and meta["voi"] is None
    assert grey[0, 2] != grey[0, 3]  # 1548 vs 1549: 12-bit steps survive (no 8-bit quantisation)

    inverted = load_cxr_image(save_dicom(make_dicom(STORED, "MONOCHROME1"), tmp_path / "m1.dcm"))
    np.testing.assert_allclose(inverted, 1.0 - STORED / 4095.0, rtol=0, atol=1e-7)


def test_dicom_rescale_slope_intercept(tmp_path):
    ds = make_dicom(STORED, RescaleSlope=2, RescaleIntercept=-1024)
    grey, meta = read_dicom(save_dicom(ds, tmp_path / "r.dcm"))
    # Modality range: [0*2-1024, 4095*2-1024] = [-1024, 7166]; stored 1000 -> 976 -> 2000/8190.
    assert meta["value_range"] == (-1024.0, 7166.0)
    assert grey[0, 1] == pytest.approx(2000 / 8190, abs=1e-7)
    np.testing.assert_allclose(grey, (STORED * 2.0 - 1024 + 1024) / 8190, rtol=0, atol=1e-7)


def test_dicom_window_linear(tmp_path):
    ds = make_dicom(STORED, WindowCenter=2048, WindowWidth=1000)
    grey, meta = read_dicom(save_dicom(ds, tmp_path / "w.dcm"))
    # PS3.3 C.11.2.1.2.1 LINEAR: c' = 2047.5, w' = 999; x <= 1548 -> 0, x > 2547 -> 1,
    # else (x - 2047.5) / 999 + 0.5.
    expected = np.array(
        [[0.0, 0.0, 0.0, (1549 - 2047.5) / 999 + 0.5], [(2048 - 2047.5) / 999 + 0.5, 1.0, 1.0, 1.0]]
    )
    np.testing.assert_allclose(grey, expected, rtol=0, atol=1e-6)
    assert meta["voi"] == "window" and meta["window"] == (2048.0, 1000.0)
    # apply_voi_lut=False ignores the window.
    raw = load_cxr_image(tmp_path / "w.dcm", apply_voi_lut=False)
    np.testing.assert_allclose(raw, STORED / 4095.0, atol=1e-7)


def test_dicom_rescale_window_monochrome1_signed(tmp_path):
    stored = np.array([[-100, 0], [300, 900]], dtype=np.int16)
    ds = make_dicom(
        stored, "MONOCHROME1", bits_stored=16, signed=True, RescaleSlope=0.5, RescaleIntercept=10,
        WindowCenter=100, WindowWidth=201,
    )
    grey = load_cxr_image(save_dicom(ds, tmp_path / "s.dcm"))
    # Rescaled: [-40, 10, 160, 460]; c' = 99.5, w' = 200 -> bounds (-0.5, 199.5]:
    # -40 -> 0, 10 -> (10 - 99.5)/200 + 0.5 = 0.0525, 160 -> 0.8025, 460 -> 1; then MONOCHROME1: 1 - v.
    np.testing.assert_allclose(grey, [[1.0, 1 - 0.0525], [1 - 0.8025, 0.0]], rtol=0, atol=1e-6)


def test_dicom_voi_lut_sequence_preferred_over_window(tmp_path):
    ds = make_dicom(STORED, WindowCenter=2048, WindowWidth=1000)
    ds.VOILUTSequence = Sequence([voi_lut_item((3, 1000, 8), (0, 100, 255))])
    grey, meta = read_dicom(save_dicom(ds, tmp_path / "lut.dcm"))
    # Entries for x = 1000, 1001, 1002; below -> first entry, above -> last; 8-bit output / 255.
    np.testing.assert_allclose(grey, [[0, 0, 1, 1], [1, 1, 1, 1]], atol=0)
    assert meta["voi"] == "lut" and meta["value_range"] == (0.0, 255.0)
    ramp = make_dicom(np.array([[999, 1000, 1001, 1002]], dtype=np.uint16))
    ramp.VOILUTSequence = Sequence([voi_lut_item((3, 1000, 8), (0, 100, 255))])
    np.testing.assert_allclose(read_dicom(ramp)[0], [[0, 0, 100 / 255, 1]], atol=1e-7)


def test_dicom_dataset_bytes_and_path_agree_with_metadata(tmp_path):
    ds = make_dicom(STORED, ViewPosition="PA", PixelSpacing=[0.139, 0.14], WindowCenter=2000, WindowWidth=3000)
    path = save_dicom(ds, tmp_path / "a.dcm")
    from_path, meta = load_cxr_image(path, return_metadata=True)
    np.testing.assert_array_equal(load_cxr_image(path.read_bytes()), from_path)
    np.testing.assert_array_equal(load_cxr_image(pydicom.dcmread(path)), from_path)
    assert meta["view_position"] == "PA" and meta["pixel_spacing"] == (0.139, 0.14)
    assert meta["format"] == "dicom" and str(path) in meta["source"]


# ------------------------------------------------------------------ geometry and numbers


@pytest.mark.parametrize(
    "shape, size, resized, crop_offset",
    [((60, 90), 30, (30, 45), (0, 8)), ((90, 60), 30, (45, 30), (8, 0)), ((7, 10), 5, (5, 7), (0, 1))],
)
def test_resize_keeps_aspect_and_crops_centre(rng, shape, size, resized, crop_offset):
    image = rng.random(shape).astype(np.float32)
    no_crop = identity_processor(do_resize=True, size=size)(image)["pixel_values"][0][0]
    assert no_crop.shape == resized  # long edge = int(size * long / short), torchvision's rule
    # Reference: PIL's antialiased bicubic on the float image, clamped to the input range.
    reference = np.asarray(Image.fromarray(image, mode="F").resize(resized[::-1], Image.BICUBIC))
    reference = np.clip(reference, 0.0, 1.0)
    np.testing.assert_allclose(no_crop, reference, atol=2e-6)
    cropped = identity_processor(do_resize=True, size=size, do_center_crop=True, crop_size=size)(
        image, return_tensors="np"
    )["pixel_values"][0, 0]
    top, left = crop_offset  # int(round((resized - crop) / 2)), torchvision's CenterCrop
    np.testing.assert_array_equal(cropped, no_crop[top : top + size, left : left + size])


def test_exact_height_width_resize(rng):
    image = rng.random((20, 30)).astype(np.float32)
    out = identity_processor(do_resize=True, size={"height": 8, "width": 16})(image, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 1, 8, 16)
    nearest = identity_processor(do_resize=True, size={"height": 4, "width": 4}, resample=Image.Resampling.NEAREST)
    tiles = nearest(np.array([[0.0, 1.0], [2.0, 3.0]]), return_tensors="np")["pixel_values"][0, 0]
    np.testing.assert_array_equal(tiles, np.kron([[0.0, 1.0], [2.0, 3.0]], np.ones((2, 2))))


def letterbox_processor(side, **overrides):
    """MGCA's letterbox to `side` x `side` without the crop, normalised with (0.5, 0.5): black -> -1, white -> 1."""
    settings = dict(size={"longest_edge": side}, do_pad=True, pad_size=side, do_center_crop=False,
                    do_minmax_rescale=False, image_mean=0.5, image_std=0.5, num_channels=1)
    settings.update(overrides)
    return CXRImageProcessor(**settings)


@pytest.mark.parametrize(
    "shape, content_rows, content_cols",
    [
        ((6, 12), slice(1, 3), slice(0, 4)),  # wide: 4 x int(6 * 4/12) = 2 rows, margin 2 -> 1 above, 1 below
        ((5, 12), slice(1, 2), slice(0, 4)),  # int(5 * 4/12) = 1 row, margin 3 -> floor 1 above, ceil 2 below
        ((12, 5), slice(0, 4), slice(1, 2)),  # tall: the same on the columns
        ((8, 8), slice(0, 4), slice(0, 4)),  # square: nothing to pad
    ],
)
def test_letterbox_pads_black_around_the_centred_content(shape, content_rows, content_cols):
    """Constant 0.7 image: the content is (0.7 - 0.5) / 0.5 = 0.4 (a constant resizes to itself), the border is
    exactly the normalised black -1, placed with MGCA's floor-before / ceil-after margins."""
    out = letterbox_processor(4)(np.full(shape, 0.7, np.float32), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 1, 4, 4)
    expected = torch.full((4, 4), -1.0)
    expected[content_rows, content_cols] = 0.4
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-6)
    assert (out[0, 0][expected == -1.0] == -1.0).all()  # the border is black exactly, not approximately


def test_letterbox_geometry_of_mgca_256(rng):
    """A 300 x 200 (H x W) image letterboxed to 256: 256 x int(200 * 256/300) = 256 x 170 content, 86 columns of
    padding split 43 / 43; the content is the antialiased resize of the image (`resize_grey`, standing in for cv2
    INTER_AREA)."""
    image = rng.random((300, 200)).astype(np.float32)
    out = letterbox_processor(256)(image, return_tensors="pt")["pixel_values"][0, 0]
    assert out.shape == (256, 256)
    assert (out[:, :43] == -1.0).all() and (out[:, 213:] == -1.0).all()
    resized = resize_grey(torch.from_numpy(image)[None, None], (256, 170))[0, 0]
    torch.testing.assert_close(out[:, 43:213], (resized - 0.5) / 0.5, rtol=0, atol=1e-6)


def test_letterbox_minmax_rescales_the_content_before_padding(rng):
    """With do_minmax_rescale the content spans exactly black..white (-1..1) by its own range and the border stays
    black; the centre crop of the letterbox is the same window of the uncropped output (the training random crop's
    source), which would not hold if min-max ran after the crop."""
    image = (0.3 + 0.5 * rng.random((6, 12))).astype(np.float32)  # range [0.3, 0.8], never black or white
    letterbox = letterbox_processor(8, do_minmax_rescale=True)
    out = letterbox(image, return_tensors="pt")["pixel_values"][0, 0]
    rows = slice(2, 6)  # 8 x int(6 * 8/12) = 4 rows, 2 above and 2 below
    resized = resize_grey(torch.from_numpy(image)[None, None], (4, 8))[0, 0]
    low, high = resized.min(), resized.max()
    torch.testing.assert_close(out[rows], ((resized - low) / (high - low) - 0.5) / 0.5, rtol=0, atol=1e-6)
    assert out[rows].min() == -1.0 and out[rows].max() == pytest.approx(1.0, abs=1e-6)
    assert (out[:2] == -1.0).all() and (out[6:] == -1.0).all()
    cropped = letterbox(image, do_center_crop=True, crop_size=6, return_tensors="pt")["pixel_values"][0, 0]
    torch.testing.assert_close(cropped, out[1:7, 1:7], rtol=0, atol=0)  # offset round((8 - 6) / 2) = 1


def test_letterbox_settings_survive_save_and_load(tmp_path, rng):
    processor = letterbox_processor(12, do_center_crop=True, crop_size=8, num_channels=3)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["size"] == {"longest_edge": 12} and saved["do_pad"] is True
    assert saved["pad_size"] == {"height": 12, "width": 12} and saved["crop_size"] == {"height": 8, "width": 8}
    image = rng.random((9, 16)).astype(np.float32)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    assert expected.shape == (1, 3, 8, 8)
    loaded = CXRImageProcessor.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(image, return_tensors="pt")["pixel_values"], expected, rtol=0, atol=0)
    assert CXRImageProcessor().do_pad is False  # the default pipeline does not pad


def test_bad_letterbox_settings_name_the_field(rng):
    with pytest.raises(ValueError, match=r"do_pad=True needs pad_size"):
        CXRImageProcessor(do_pad=True)
    with pytest.raises(ValueError, match=r"do_pad=True needs pad_size"):
        CXRImageProcessor()(rng.random((8, 8)), do_pad=True)  # call-time options are validated too
    with pytest.raises(ValueError, match=r"pad_size must have the keys \['height', 'width'\]"):
        CXRImageProcessor(do_pad=True, pad_size={"shortest_edge": 8}, crop_size=8)
    with pytest.raises(ValueError, match=r"size\['longest_edge'\]=10 does not fit in pad_size 8x8"):
        CXRImageProcessor(size={"longest_edge": 10}, do_pad=True, pad_size=8, crop_size=8)
    with pytest.raises(ValueError, match=r"crop_size 10x10 is larger than pad_size 8x8"):
        CXRImageProcessor(size={"longest_edge": 8}, do_pad=True, pad_size=8, crop_size=10)
    # a shortest-edge resize depends on the image: checked per image, with its name
    shortest_then_pad = CXRImageProcessor(size=8, do_pad=True, pad_size=10, do_center_crop=False)
    with pytest.raises(ValueError, match=r"^images \(.*\): image is 8x12 after resizing, larger than pad_size 10x10"):
        shortest_then_pad(rng.random((16, 24)))
    with pytest.raises(ValueError, match="does not support do_rescale=True"):
        CXRImageProcessor(size={"longest_edge": 8}, do_pad=True, pad_size=8, crop_size=8, do_rescale=True)


def test_minmax_and_imagenet_normalisation_by_hand():
    image = np.array([[10, 20], [30, 60]], dtype=np.uint8)  # min-max -> [[0, .2], [.4, 1]]
    processor = CXRImageProcessor(do_resize=False, do_center_crop=False)
    out = processor(image, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    # Channel 0: (v - 0.485) / 0.229.
    torch.testing.assert_close(
        out[0, 0], torch.tensor([[-2.1179039, -1.2445415], [-0.3711790, 2.2489083]]), rtol=0, atol=1e-6
    )
    minmax = np.array([[0.0, 0.2], [0.4, 1.0]], dtype=np.float32)
    for channel in (1, 2):
        expected = (minmax - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        np.testing.assert_allclose(out[0, channel].numpy(), expected, rtol=0, atol=1e-6)
    one_channel = CXRImageProcessor(
        do_resize=False, do_center_crop=False, num_channels=1, image_mean=0.5, image_std=0.25
    )(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(one_channel, [[[[-2.0, -1.2], [-0.4, 2.0]]]], rtol=0, atol=1e-6)
    no_minmax = identity_processor()(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(no_minmax[0, 0], image / 255.0, rtol=1e-6)


def per_channel_minmax(x):
    low, high = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    return (x - low) / (high - low)


def test_matches_chexfound_eval_transform_on_8bit_images(rng):
    """CheXFound eval: Resize(s, bicubic) on the 8-bit PIL image -> CenterCrop -> ToTensor -> per-image
    min-max -> ImageNet Normalize. We resize in float, so they differ only by 8-bit rounding."""
    transforms = pytest.importorskip("torchvision.transforms")
    # Blocky 48x72 image, levels away from 0 and 255: PIL resizes 8-bit images in two passes with an
    # 8-bit intermediate, whose clipping at 0/255 would add differences at saturated edges.
    smooth = np.kron(rng.integers(30, 226, size=(6, 9)), np.ones((8, 8)))
    image = Image.fromarray(smooth.astype(np.uint8)).convert("RGB")
    reference = transforms.Compose(
        [
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Lambda(per_channel_minmax),
            transforms.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
        ]
    )(image)
    ours = CXRImageProcessor(size=32, crop_size=32)(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == reference.shape == (3, 32, 32)
    # PIL's 8-bit rounding (and its 8-bit intermediate pass) / std: measured max 0.028, mean 0.007.
    torch.testing.assert_close(ours, reference, rtol=0, atol=0.04)
    assert (ours - reference).abs().mean() < 0.01


def test_mixed_batch_matches_single_images(tmp_path, rng):
    png16 = write_png(tmp_path / "a.png", rng.integers(0, 65536, size=(40, 50), dtype=np.uint16))
    dicom = make_dicom(rng.integers(0, 4096, size=(36, 36)).astype(np.uint16), "MONOCHROME1")
    dicom_path = save_dicom(dicom, tmp_path / "b.dcm")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    inputs = [
        png16,
        str(dicom_path),
        pydicom.dcmread(dicom_path),
        jpeg.getvalue(),
        Image.fromarray(rng.integers(0, 256, size=(33, 44), dtype=np.uint8)),
        rng.random((25, 30, 3)).astype(np.float32),
        torch.rand(1, 28, 40),
    ]
    processor = CXRImageProcessor(size=16, crop_size=16)
    batch = processor(inputs, return_tensors="pt")["pixel_values"]
    assert batch.shape == (7, 3, 16, 16) and batch.dtype == torch.float32
    for index, image in enumerate(inputs):
        torch.testing.assert_close(batch[index], processor(image, return_tensors="pt")["pixel_values"][0])
    torch.testing.assert_close(batch[1], batch[2])  # DICOM path and dataset
    listed = processor(inputs[:2])["pixel_values"]  # return_tensors=None -> list of (C, H, W) arrays
    assert isinstance(listed, list) and listed[0].shape == (3, 16, 16)


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip(tmp_path, rng):
    from transformers import AutoImageProcessor

    processor = CXRImageProcessor(
        size=20, crop_size={"height": 16, "width": 12}, do_minmax_rescale=False, image_mean=[0.1, 0.2, 0.3],
        image_std=[0.5, 0.6, 0.7], apply_voi_lut=False,
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CXRImageProcessor"
    assert saved["size"] == {"shortest_edge": 20} and saved["crop_size"] == {"height": 16, "width": 12}
    assert saved["do_minmax_rescale"] is False and saved["apply_voi_lut"] is False
    assert saved["image_mean"] == [0.1, 0.2, 0.3] and saved["num_channels"] == 3 and saved["resample"] == 3
    image = rng.random((30, 40)).astype(np.float32)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    for loaded in (CXRImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is CXRImageProcessor
        assert loaded.to_dict() == processor.to_dict()
        torch.testing.assert_close(loaded(image, return_tensors="pt")["pixel_values"], expected, rtol=0, atol=0)


def test_remote_code_files_and_auto_map(tmp_path):
    assert CXRImageProcessor._auto_class == "AutoImageProcessor"  # registered on import
    CXRImageProcessor(size=32, crop_size=32).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_processing_cxr.py", "preprocessor_config.json"]
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {"AutoImageProcessor": "image_processing_cxr.CXRImageProcessor"}
    assert (tmp_path / "image_processing_cxr.py").read_bytes() == SOURCE_FILE.read_bytes()


def test_module_is_self_contained_for_remote_code():
    """Only numpy, PIL, torch, transformers, the standard library, and pydicom inside try/except."""
    tree = ast.parse(SOURCE_FILE.read_text())
    standard_library = {"io", "logging", "os", "struct", "sys", "collections", "typing", "__future__"}
    allowed = {"numpy", "PIL", "torch", "transformers"} | standard_library
    guarded = {node for block in ast.walk(tree) if isinstance(block, ast.Try) for node in ast.walk(block)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in remote code"
            roots = [node.module.split(".")[0]]
        elif isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        else:
            continue
        for root in roots:
            assert root in allowed or (root == "pydicom" and node in guarded), root


# ------------------------------------------------------------------ bad inputs


def test_missing_directory_empty_corrupt_and_unknown_files(tmp_path):
    processor = CXRImageProcessor(size=8, crop_size=8)
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=r"images\[1\] \('.*nope\.png'\): no such file"):
        processor([np.eye(8), missing])
    with pytest.raises(ValueError, match="is a directory"):
        load_cxr_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png': the file is empty"):
        load_cxr_image(tmp_path / "empty.png")
    good = write_png(tmp_path / "good.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.png': cannot decode the image file"):
        load_cxr_image(tmp_path / "cut.png")
    (tmp_path / "notes.txt").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match=r"notes\.txt': not a readable image"):
        load_cxr_image(tmp_path / "notes.txt")


def test_bad_dicoms(tmp_path):
    no_pixels = make_dicom(STORED)
    del no_pixels.PixelData
    with pytest.raises(ValueError, match=r"nopix\.dcm': the DICOM file has no Pixel Data"):
        load_cxr_image(save_dicom(no_pixels, tmp_path / "nopix.dcm"))
    full = save_dicom(make_dicom(np.zeros((64, 64), np.uint16)), tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(full[: len(full) - 3000])
    with pytest.raises(ValueError, match=r"cut\.dcm': cannot (decode|parse) the DICOM"):
        load_cxr_image(tmp_path / "cut.dcm")
    frames = make_dicom(np.zeros((4, 4), np.uint16), NumberOfFrames=2)
    frames.PixelData = np.zeros((2, 4, 4), np.uint16).tobytes()
    with pytest.raises(ValueError, match="multi-frame DICOM"):
        load_cxr_image(frames)
    bad_window = make_dicom(STORED, WindowCenter=100, WindowWidth=0)
    with pytest.raises(ValueError, match="invalid DICOM VOI LUT / window"):
        load_cxr_image(bad_window)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.zeros((0, 5), np.uint8), ValueError, r"images\[1\] \(numpy.ndarray shape \(0, 5\) uint8\): empty image"),
        (np.zeros((1, 3, 8, 8), np.float32), ValueError, r"images\[1\] .*4-D array of shape \(1, 3, 8, 8\).*a list"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, r"images\[1\] .*2 channels"),
        (torch.zeros(2, 8, 8), ValueError, r"images\[1\] \(torch.Tensor shape \(2, 8, 8\).*2 channels"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, r"images\[1\] .*1 of 4 pixels are NaN or infinite"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, r"images\[1\] .*NaN or infinite"),
        (np.array([[1 + 1j]]), TypeError, r"images\[1\] .*dtype complex128 is not a number type"),
        (12345, TypeError, r"images\[1\] \(int\): unsupported input type builtins.int"),
        ([np.ones((4, 4))], TypeError, r"images\[1\] \(list\): unsupported input type"),
        (np.full((8, 8), 7, np.uint8), ValueError, r"images\[1\] .*constant \(every pixel = 0.027"),
    ],
)
def test_bad_arrays_name_the_input_and_the_reason(bad, error, message):
    good = np.arange(64, dtype=np.float32).reshape(8, 8)
    with pytest.raises(error, match=message):
        CXRImageProcessor(size=8, crop_size=8)([good, bad], return_tensors="pt")


@pytest.mark.parametrize("shape", [(44, 40), (32, 32), (7, 300)])
@pytest.mark.parametrize("as_pil", [False, True])
def test_constant_images_are_rejected_before_resizing_at_any_size(shape, as_pil):
    """Resampling ripple used to give a 44x40 constant image values from -2.1 to 2.6 after min-max rescaling."""
    constant = np.full(shape, 37, np.uint8)
    image = Image.fromarray(constant) if as_pil else constant
    with pytest.raises(ValueError, match=r"images \(.*\): the image is constant \(every pixel = 0.145"):
        CXRImageProcessor(size=32, crop_size=32)(image, return_tensors="pt")
    # without min-max rescaling a constant image is valid input
    out = CXRImageProcessor(size=32, crop_size=32, do_minmax_rescale=False, do_normalize=False)(image, return_tensors="pt")
    torch.testing.assert_close(out["pixel_values"], torch.full((1, 3, 32, 32), 37 / 255))


def test_fetch_images_keeps_paths_for_the_full_precision_reader(tmp_path):
    """ProcessorMixin.__call__ runs image_processor.fetch_images first; transformers' default decodes paths to 8-bit."""
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[20913, 55181], [30000, 40000]], np.uint16)).save(path)
    processor = CXRImageProcessor(size=2, crop_size=2, do_minmax_rescale=False, do_normalize=False)
    assert processor.fetch_images([str(path)]) == [str(path)]
    values = processor(processor.fetch_images(str(path)), return_tensors="pt")["pixel_values"][0, 0]
    torch.testing.assert_close(values, torch.tensor([[20913, 55181], [30000, 40000]]) / 65535.0)


def test_dicom_without_pydicom_says_so_in_one_line(tmp_path, monkeypatch):
    path = save_dicom(make_dicom(np.arange(64, dtype=np.uint16).reshape(8, 8)), tmp_path / "x.dcm")
    for name in [name for name in sys.modules if name == "pydicom" or name.startswith("pydicom.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(ImportError, match=r"^images \('.*x\.dcm'\): reading DICOM needs pydicom \(`pip install pydicom`\)\.$"):
        CXRImageProcessor(size=8, crop_size=8)(str(path))


def test_single_input_is_named_images():
    with pytest.raises(ValueError, match=r"^images \(numpy.ndarray shape \(0,\) float32\): empty image"):
        CXRImageProcessor()(np.zeros((0,), np.float32))


def test_bad_settings_and_call_options(rng):
    with pytest.raises(ValueError, match="num_channels must be 1 or 3"):
        CXRImageProcessor(num_channels=2)
    with pytest.raises(ValueError, match=r"image_mean has 3 values .*num_channels=1 needs 1 value"):
        CXRImageProcessor(num_channels=1)
    with pytest.raises(ValueError, match="image_std must be positive"):
        CXRImageProcessor(image_std=[0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="does not support do_rescale=True"):
        CXRImageProcessor()(np.ones((4, 4)), do_rescale=True)
    with pytest.raises(ValueError, match="resample=.* is not supported"):
        CXRImageProcessor(resample=Image.Resampling.LANCZOS)
    with pytest.raises(
        ValueError, match=r"size must have the keys \['shortest_edge'\] or \['longest_edge'\] or \['height', 'width'\]"
    ):
        CXRImageProcessor(size={"shortest_edge": 8, "longest_edge": 16})
    with pytest.raises(TypeError, match="unexpected keyword argument 'do_magic'"):
        CXRImageProcessor()(np.ones((4, 4)), do_magic=True)
    with pytest.raises(ValueError, match="images is an empty list"):
        CXRImageProcessor()([])
    with pytest.raises(ValueError, match=r"images \(.*\): image is 6x6 after resizing, smaller than crop_size 8x8"):
        CXRImageProcessor(do_resize=False, crop_size=8)(rng.random((6, 6)))
    with pytest.raises(ValueError, match="different shapes after preprocessing"):
        identity_processor()([rng.random((4, 4)), rng.random((4, 5))], return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors must be 'pt', 'np' or None"):
        identity_processor()(rng.random((4, 4)), return_tensors="tf")

"""Chest X-ray image processor: DICOM, 8/16-bit PNG, JPEG, PIL, numpy and torch -> ``pixel_values``.

Two layers:

1. **Reading** (:func:`load_cxr_image`, :func:`read_dicom`): any supported input becomes one
   ``float32`` grey image ``(H, W)`` on a documented scale, **0 = black and 1 = white as displayed**
   (MONOCHROME2 convention; dense structures such as bone are bright):

   ==========================  ===============================================================
   input                       scale
   ==========================  ===============================================================
   uint8 (8-bit PNG/JPEG/...)  value / 255
   uint16 (16-bit PNG, I;16)   value / 65535, read at full 16-bit precision (no 8-bit PIL
                               conversion, which would saturate at 255)
   PIL mode ``I`` from a PNG   value / 65535 (PNG holds at most 16 bits); other ``I`` unchanged
   DICOM                       stored value -> Modality LUT (LUT sequence or RescaleSlope /
                               RescaleIntercept) -> VOI LUT sequence, else WindowCenter /
                               WindowWidth (when present and ``apply_voi_lut``) -> divided into
                               [0, 1] by the nominal output range of the last transform applied
                               (e.g. ``[0, 2**BitsStored - 1]`` for raw unsigned data) ->
                               ``1 - value`` for MONOCHROME1. Computed in float64, no 8-bit step.
   float arrays / PIL ``F``    unchanged (must be finite)
   other integer arrays        unchanged (cast to float)
   bool / PIL ``1``            0 or 1
   ==========================  ===============================================================

   Colour inputs become grey: an RGB(A) image whose three colour channels are equal (grey stored
   as RGB, the usual case for CXRs) keeps that channel exactly; otherwise the ITU-R BT.601 luma
   ``0.299 R + 0.587 G + 0.114 B`` is used. Alpha is ignored.

2. **Preprocessing** (:class:`CXRImageProcessor`), CheXFound's evaluation transform
   (reference/chexfound_dinov2.md §3): resize the shortest edge (aspect kept; bicubic with
   antialiasing, the PIL filter torchvision applies to PIL images) -> centre crop -> per-image
   min-max rescale to [0, 1] -> replicate to ``num_channels`` -> normalise with
   ``image_mean`` / ``image_std`` (ImageNet by default). Optionally MGCA's letterbox instead
   (reference/mgca_chexzero_cml_relaxedclip.md §1c): resize the longest edge, zero-pad (black)
   centred to a square, then the centre crop.

This file is copied next to saved models as remote code, so it imports only numpy, PIL, torch,
transformers and (optionally) pydicom.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoImageProcessor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs


def _pydicom(name: str):
    """pydicom, imported on the first DICOM input: it is optional (remote code must load without it) and takes
    about half a second to import."""
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise ImportError(f"{name}: reading DICOM needs pydicom (`pip install pydicom`).") from None
    return pydicom


def _is_dicom_dataset(source: Any) -> bool:
    # A pydicom Dataset can exist only once pydicom has been imported; no import needed to check.
    module = sys.modules.get("pydicom.dataset")
    return module is not None and isinstance(source, module.Dataset)

logger = logging.getLogger(__name__)

__all__ = ["CXRImageProcessor", "CXRImageProcessorKwargs", "load_cxr_image", "read_dicom"]

# ITU-R BT.601 luma weights (the ones PIL uses for RGB -> "L").
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_DICOM_MAGIC = b"DICM"  # at byte offset 128, after the preamble (PS3.10 §7.1)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TORCH_RESIZE_MODES = {
    PILImageResampling.NEAREST: "nearest-exact",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}
_ALLOWED_SIZE_KEYS = ({"shortest_edge"}, {"longest_edge"}, {"height", "width"})
# ImagesKwargs options that this processor does not implement; setting them is an error.
_UNSUPPORTED_OPTIONS = ("do_rescale", "do_convert_rgb")


# --------------------------------------------------------------------------------------------
# Reading: any input -> float32 grey (H, W)
# --------------------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    """Short description of an input for error messages: the path, or the type (and shape)."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"{type(source).__module__}.{type(source).__name__} shape {tuple(source.shape)} {source.dtype}"
    if isinstance(source, Image.Image):
        return f"PIL image mode {source.mode} size {source.size}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes"
    filename = getattr(source, "filename", None)
    if _is_dicom_dataset(source):
        return f"pydicom dataset {filename!r}" if filename else "pydicom dataset"
    return type(source).__name__


def load_cxr_image(
    source: Any,
    *,
    apply_voi_lut: bool = True,
    input_data_format: str | None = None,
    return_metadata: bool = False,
    name: str | None = None,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Read one chest X-ray into a ``float32`` grey array ``(H, W)`` (0 = black, 1 = white).

    The scale per input type is in the module docstring. Every failure raises with ``name`` (by
    default the path or the input type) and the reason.

    Args:
        source: a path (``str`` / ``os.PathLike``) or ``bytes`` of a PNG/JPEG/any PIL format or a
            DICOM file; a ``PIL.Image.Image``; a ``numpy.ndarray`` or ``torch.Tensor`` of shape
            ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in {1, 3, 4}; a
            ``pydicom.dataset.Dataset``; or a ``datasets`` ``Image(decode=False)`` dict with
            ``"bytes"`` and/or ``"path"``.
        apply_voi_lut: DICOM only: apply the VOI LUT sequence, else the window centre/width, when
            the file has one.
        input_data_format: ``"channels_first"`` or ``"channels_last"`` for 3-D arrays whose channel
            axis is ambiguous; by default numpy arrays are read channels-last and torch tensors
            channels-first when both ends could be a channel axis.
        return_metadata: also return a dict (``source``, ``format``, ``value_range`` used for the
            scaling, and for DICOM ``photometric_interpretation``, ``inverted``, ``voi``,
            ``window``, ``view_position``, ``pixel_spacing``).
        name: how errors refer to the input.

    Returns:
        ``image`` float32 ``(H, W)``, or ``(image, metadata)`` when ``return_metadata``.
    """
    name = name or _describe(source)
    if isinstance(source, dict) and ("bytes" in source or "path" in source):
        path = source.get("path")
        data = source.get("bytes")
        name = f"{name} (path {path!r})" if path else name
        source = data if data is not None else path
        if source is None:
            raise ValueError(f"{name}: the image dict has neither 'bytes' nor 'path'.")
    if isinstance(source, (str, os.PathLike)):
        image, meta = _read_file(os.fspath(source), name, apply_voi_lut)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image, meta = _read_bytes(bytes(source), name, apply_voi_lut)
    elif _is_dicom_dataset(source):
        image, meta = read_dicom(source, apply_voi_lut=apply_voi_lut, name=name)
    elif isinstance(source, Image.Image):
        image, meta = _read_pil(source, name)
    elif isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()  # numpy has no bfloat16
        image = _array_to_grey(tensor.numpy(), name, input_data_format or "channels_first_if_ambiguous")
        meta = {"format": "torch"}
    elif isinstance(source, np.ndarray):
        image = _array_to_grey(source, name, input_data_format or "channels_last_if_ambiguous")
        meta = {"format": "numpy"}
    else:
        raise TypeError(
            f"{name}: unsupported input type {type(source).__module__}.{type(source).__name__}; expected a "
            "file path, bytes, PIL image, numpy array, torch tensor or pydicom Dataset."
        )
    meta.setdefault("value_range", _nominal_range(source))
    meta["source"] = name
    return (image, meta) if return_metadata else image


def _nominal_range(source: Any) -> tuple[float, float] | None:
    dtype = getattr(source, "dtype", None)
    if dtype == np.uint8 or dtype == torch.uint8:
        return (0.0, 255.0)
    if dtype == np.uint16 or dtype == torch.uint16:
        return (0.0, 65535.0)
    return None


def _check_finite(image: np.ndarray, name: str) -> None:
    """Raise for NaN/inf pixels. Called on the raw array (`_array_to_grey`) and on DICOM's value range: integer
    data is finite by construction, and for floats NaN and inf show in min/max without a boolean temporary."""
    if image.dtype.kind != "f" or np.isfinite(image.min()) and np.isfinite(image.max()):
        return
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise ValueError(f"{name}: {bad} of {image.size} pixels are NaN or infinite; the image cannot be used.")


def _read_file(path: str, name: str, apply_voi_lut: bool) -> tuple[np.ndarray, dict[str, Any]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such file.")
    if os.path.isdir(path):
        raise ValueError(f"{name}: is a directory, not an image file.")
    with open(path, "rb") as handle:
        data = handle.read()
    return _read_bytes(data, name, apply_voi_lut)


def _read_bytes(data: bytes, name: str, apply_voi_lut: bool) -> tuple[np.ndarray, dict[str, Any]]:
    if not data:
        raise ValueError(f"{name}: the file is empty (0 bytes).")
    if data[128:132] == _DICOM_MAGIC:
        return read_dicom(data, apply_voi_lut=apply_voi_lut, name=name)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now so truncated/corrupt files fail here, with the name
    except UnidentifiedImageError:
        # DICOM files without the 128-byte preamble have no magic number: let pydicom try (when installed).
        try:
            dataset = _pydicom(name).dcmread(io.BytesIO(data), force=True)
        except Exception:
            dataset = None
        if dataset is not None and "PixelData" in dataset:
            return read_dicom(dataset, apply_voi_lut=apply_voi_lut, name=name)
        raise ValueError(
            f"{name}: not a readable image: neither Pillow (PNG, JPEG, ...) nor pydicom (DICOM) recognise it."
        ) from None
    except Exception as error:
        raise ValueError(f"{name}: cannot decode the image file (corrupt or truncated?): {error}") from error
    # In place: without an EXIF orientation, exif_transpose would otherwise return a full copy of the pixels.
    ImageOps.exif_transpose(image, in_place=True)
    grey, meta = _read_pil(image, name)
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 26:
        bit_depth, colour_type = struct.unpack(">BB", data[24:26])
        if bit_depth == 16 and colour_type in (2, 4, 6):
            # Pillow reads 16-bit colour / grey+alpha PNGs as 8-bit: precision is lost, order kept.
            logger.warning("%s: 16-bit colour or grey+alpha PNG; Pillow decodes it at 8-bit precision.", name)
    return grey, meta


def _read_pil(image: Image.Image, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    mode = image.mode
    meta: dict[str, Any] = {"format": (image.format or "PIL").lower(), "pil_mode": mode}
    if mode.startswith("I;16"):
        array = np.asarray(image).astype(np.uint16, copy=False)  # native byte order, full 16 bits
    elif mode == "I" and image.format == "PNG":
        # Some Pillow versions decode 16-bit grey PNGs as int32 "I"; a PNG holds at most 16 bits.
        array = np.asarray(image).astype(np.uint16)
    elif mode in ("I", "F", "1", "L", "LA", "RGB", "RGBA", "RGBX"):
        array = np.asarray(image)
        if mode == "LA":
            array = array[..., 0]
    else:  # palette, CMYK, YCbCr, ...: let Pillow map to RGB first
        array = np.asarray(image.convert("RGB"))
    meta["value_range"] = _nominal_range(array)
    return _array_to_grey(array, name, "channels_last"), meta


def _array_to_grey(array: np.ndarray, name: str, data_format: str) -> np.ndarray:
    """(H, W) / (H, W, C) / (C, H, W) array -> float32 grey (H, W) on the documented scale."""
    if array.dtype.kind not in "buif":
        raise TypeError(f"{name}: array dtype {array.dtype} is not a number type.")
    if array.size == 0:
        raise ValueError(f"{name}: empty image (shape {tuple(array.shape)}).")
    _check_finite(array, name)
    if array.ndim == 3:
        array = _channels_last(array, name, data_format)
        channels = array.shape[-1]
        if channels not in (1, 3, 4):
            raise ValueError(
                f"{name}: {channels} channels (shape {tuple(array.shape)} as H, W, C); expected 1 (grey), "
                "3 (RGB) or 4 (RGBA)."
            )
        array = array[..., 0] if channels == 1 else _rgb_to_grey(array[..., :3])
    elif array.ndim != 2:
        raise ValueError(
            f"{name}: {array.ndim}-D array of shape {tuple(array.shape)}; expected one image, (H, W), "
            "(H, W, C) or (C, H, W). Pass a batch as a list of images."
        )
    return _to_unit_scale(array)


def _to_unit_scale(array: np.ndarray) -> np.ndarray:
    """float32 copy on the documented scale: uint8 / 255, uint16 / 65535, anything else unchanged."""
    # One ufunc pass each: the integers are cast to float32 inside the loop, then divided in float32 (the same
    # values as astype(float32) followed by the division, without the intermediate array).
    if array.dtype == np.uint8:
        return np.divide(array, np.float32(255.0), dtype=np.float32)
    if array.dtype == np.uint16:
        return np.divide(array, np.float32(65535.0), dtype=np.float32)
    return array.astype(np.float32)


def _channels_last(array: np.ndarray, name: str, data_format: str) -> np.ndarray:
    first, last = array.shape[0] <= 4, array.shape[-1] <= 4
    if data_format in ("channels_last", "last"):
        return array
    if data_format in ("channels_first", "first"):
        return np.moveaxis(array, 0, -1)
    if data_format == "channels_first_if_ambiguous":
        return np.moveaxis(array, 0, -1) if first or not last else array
    if data_format == "channels_last_if_ambiguous":
        return array if last or not first else np.moveaxis(array, 0, -1)
    raise ValueError(f"{name}: input_data_format must be 'channels_first' or 'channels_last', got {data_format!r}.")


def _rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W). Grey stored as RGB (R == G == B) is kept exactly, in its own dtype;
    otherwise the BT.601 luma, returned as float32 on the unit scale of the input dtype."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0]
    luma = rgb.astype(np.float64) @ _LUMA_WEIGHTS
    if rgb.dtype in (np.uint8, np.uint16):
        luma = luma / np.iinfo(rgb.dtype).max
    return luma.astype(np.float32)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def read_dicom(
    source: Any, *, apply_voi_lut: bool = True, name: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM image into float32 grey ``(H, W)`` in [0, 1] (1 = white as displayed).

    Grayscale pipeline (DICOM PS3.3 C.11, via ``pydicom.pixels``): stored values -> Modality LUT
    (``ModalityLUTSequence``, else ``RescaleSlope``/``RescaleIntercept``) -> VOI LUT
    (``VOILUTSequence``, else ``WindowCenter``/``WindowWidth`` with ``VOILUTFunction``; the first
    of several) when ``apply_voi_lut`` -> divided into [0, 1] by the nominal output range of the
    last transform applied -> inverted for ``MONOCHROME1`` (there, low values are white). All in
    float64, so 12/16-bit data keep their precision. Colour DICOMs are converted like RGB images.

    Args:
        source: a path, ``bytes``, a binary file object or a ``pydicom.dataset.Dataset``.
        apply_voi_lut: apply the VOI LUT / window when the file has one.
        name: how errors refer to the input (default: the path or the type).

    Returns:
        ``(image, metadata)``; metadata has ``format`` ("dicom"), ``photometric_interpretation``,
        ``bits_stored``, ``value_range`` (the range mapped to [0, 1]), ``inverted``, ``voi``
        ("lut", "window" or None), ``window`` ((centre, width) or None), ``view_position`` and
        ``pixel_spacing`` (mm, or None).
    """
    name = name or _describe(source)
    pixels_module = _pydicom(name).pixels
    dataset = _as_dicom_dataset(source, name)
    if "PixelData" not in dataset:
        raise ValueError(f"{name}: the DICOM file has no Pixel Data element (7FE0,0010).")
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax)
        raise ValueError(
            f"{name}: cannot decode the DICOM pixel data (transfer syntax {syntax_name}): {error}. "
            "Compressed files may need a pixel-data plugin (pylibjpeg, gdcm)."
        ) from error
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{name}: multi-frame DICOM ({frames} frames); select one frame first.")
    if pixels.size == 0:
        raise ValueError(f"{name}: empty DICOM image (shape {tuple(pixels.shape)}).")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits_stored = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    meta: dict[str, Any] = {
        "format": "dicom",
        "photometric_interpretation": photometric,
        "bits_stored": bits_stored,
        "inverted": False,
        "voi": None,
        "window": None,
        "view_position": str(dataset.get("ViewPosition", "") or ""),
        "pixel_spacing": _pixel_spacing(dataset),
    }
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        # pydicom returns colour data as RGB (YBR converted); Modality/VOI LUTs are grayscale-only.
        meta["value_range"] = (0.0, float(2**bits_stored - 1))
        grey = _array_to_grey(pixels.astype(np.float64) / (2**bits_stored - 1), name, "channels_last")
        return grey, meta
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{name}: unsupported grayscale Photometric Interpretation {photometric!r}.")

    values = pixels_module.apply_modality_lut(pixels, dataset)
    low, high = _modality_output_range(dataset, bits_stored)
    if apply_voi_lut:
        try:
            if _has_voi_lut_sequence(dataset):
                if np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.round(values)):
                    values = values.astype(np.int64)  # the LUT is indexed by integer values
                values = pixels_module.apply_voi(values, dataset)
                low, high = 0.0, float(2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1)
                meta["voi"] = "lut"
            elif "WindowCenter" in dataset and "WindowWidth" in dataset:
                values = pixels_module.apply_windowing(values, dataset)  # output spans the same [low, high]
                meta["voi"] = "window"
                meta["window"] = (_first_value(dataset, "WindowCenter"), _first_value(dataset, "WindowWidth"))
        except (ValueError, NotImplementedError) as error:
            raise ValueError(f"{name}: invalid DICOM VOI LUT / window: {error}") from error
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"{name}: degenerate DICOM value range [{low}, {high}] (check BitsStored / RescaleSlope).")
    meta["value_range"] = (low, high)
    if photometric != "MONOCHROME1" and _exact_in_float32(values, low, high):
        # Integers below 2**24 and their differences are exact in float32, and a float64 quotient rounded to
        # float32 equals the float32 quotient (53 >= 2 * 24 + 2 bits), so this is the float64 result, bit for bit,
        # at half the memory traffic.
        scaled = np.subtract(values, np.float32(low), dtype=np.float32)
        return np.divide(scaled, np.float32(high - low), out=scaled), meta
    grey = np.subtract(values, low, dtype=np.float64)  # float64 throughout: no 8-bit or float32 step
    if photometric == "MONOCHROME1":
        grey /= high - low
        _check_finite(grey, name)  # a LUT or window can still map to NaN/inf in a malformed file
        meta["inverted"] = True
        return np.subtract(1.0, grey, out=grey).astype(np.float32), meta
    # The division runs in float64 and only its result is rounded to float32 (= astype after dividing).
    scaled = np.divide(grey, high - low, out=np.empty(grey.shape, np.float32), casting="same_kind")
    _check_finite(scaled, name)  # a LUT or window can still map to NaN/inf in a malformed file
    return scaled, meta


def _exact_in_float32(values: np.ndarray, low: float, high: float) -> bool:
    """Integer pixel values, range ends and range width all exactly representable in float32 (|x| < 2**24)."""
    limit = 2**24
    return (values.dtype.kind in "ui" and values.dtype.itemsize <= 2 and float(low).is_integer()
            and float(high).is_integer() and abs(low) < limit and abs(high) < limit and high - low < limit)


def _as_dicom_dataset(source: Any, name: str):
    if _is_dicom_dataset(source):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"{name}: no such file.")
    try:
        return _pydicom(name).dcmread(source, force=True)
    except Exception as error:
        raise ValueError(f"{name}: cannot parse the DICOM file (corrupt or truncated?): {error}") from error


def _modality_output_range(dataset, bits_stored: int) -> tuple[float, float]:
    """Nominal range of the Modality LUT output (the range pydicom's windowing maps onto)."""
    if dataset.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits_stored - 1)
    else:
        low, high = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    if "RescaleSlope" in dataset and "RescaleIntercept" in dataset:
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _has_voi_lut_sequence(dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]


def _first_value(dataset, keyword: str) -> float:
    """First value of a possibly multi-valued element (a DICOM may offer several windows)."""
    element = dataset[keyword]
    return float(element.value[0] if element.VM > 1 else element.value)


def _pixel_spacing(dataset) -> tuple[float, float] | None:
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing else None


# --------------------------------------------------------------------------------------------
# The image processor
# --------------------------------------------------------------------------------------------


class CXRImageProcessorKwargs(ImagesKwargs, total=False):
    """Options of :class:`CXRImageProcessor` beyond transformers' ``ImagesKwargs``.

    Attributes:
        do_minmax_rescale (`bool`): rescale each image to [0, 1] by its own minimum and maximum after
            the crop (CheXFound's evaluation ``RescaleImage``).
        num_channels (`int`): channels of ``pixel_values``: 3 (grey replicated) or 1.
        apply_voi_lut (`bool`): for DICOM inputs, apply the VOI LUT / window when the file has one.
    """

    do_minmax_rescale: bool | None
    num_channels: int | None
    apply_voi_lut: bool | None


class CXRImageProcessor(BaseImageProcessor):
    r"""Chest X-ray image processor (CheXFound's evaluation preprocessing).

    ``processor(images, return_tensors="pt")`` reads each image with :func:`load_cxr_image`
    (float32 grey, 0 = black, 1 = white), then: resize the shortest edge to ``size`` (aspect kept,
    output long edge ``int(size * long / short)`` as torchvision's ``Resize``; antialiased bicubic,
    overshoot clipped to [0, 1] as PIL's 8-bit resize does) -> centre crop to
    ``crop_size`` (offsets rounded as torchvision's ``CenterCrop``) -> per-image min-max rescale to
    [0, 1] -> replicate to ``num_channels`` -> ``(x - image_mean) / image_std``.

    Letterbox (MGCA's pre-training ``resize_img``): ``size={"longest_edge": n}, do_pad=True,
    pad_size=n`` resizes the longer side to ``n`` and the shorter to ``int(short * (n / long))``
    (the official truncation), then pads with black (0 on the grey scale, so
    ``-image_mean / image_std`` after normalisation) to ``pad_size``, centred: ``floor`` of the
    margin before (top / left), ``ceil`` after. The official code downsamples with cv2
    ``INTER_AREA``; the antialiased ``resample`` filter here stands in for it (both average over
    the source footprint; values differ slightly). With ``do_pad`` the min-max rescale runs on the
    resized image BEFORE padding, so the border is exactly black, does not enter the image's
    range, and the centre crop of the padded square equals the same window of the processor's
    output with ``do_center_crop=False`` (what a training random crop is cut from). Without
    ``do_pad`` the order above (crop, then min-max) is unchanged.

    Args:
        do_resize (`bool`, defaults to `True`): resize before cropping.
        size (`dict[str, int]` or `int`, defaults to `{"shortest_edge": 512}`): target size; an int or
            ``{"shortest_edge": n}`` keeps the aspect ratio, as does ``{"longest_edge": n}`` (the
            letterbox resize); ``{"height": h, "width": w}`` does not.
        resample (`PILImageResampling`, defaults to `BICUBIC`): `BICUBIC`, `BILINEAR` (both
            antialiased, as PIL) or `NEAREST`.
        do_pad (`bool`, defaults to `False`): zero-pad (black) the resized image to ``pad_size``,
            centred, before the centre crop.
        pad_size (`dict[str, int]` or `int`, *optional*): ``{"height": h, "width": w}`` (an int is a
            square) padded to; needed with ``do_pad``.
        do_center_crop (`bool`, defaults to `True`): centre crop after resizing (and padding).
        crop_size (`dict[str, int]` or `int`, defaults to `{"height": 512, "width": 512}`): crop size.
        do_minmax_rescale (`bool`, defaults to `True`): per-image min-max rescale to [0, 1].
        do_normalize (`bool`, defaults to `True`): subtract ``image_mean`` and divide by ``image_std``.
        image_mean (`float` or `list[float]`, defaults to ImageNet ``[0.485, 0.456, 0.406]``): one
            value, or one per channel.
        image_std (`float` or `list[float]`, defaults to ImageNet ``[0.229, 0.224, 0.225]``): one
            value, or one per channel.
        num_channels (`int`, defaults to 3): 3 or 1.
        apply_voi_lut (`bool`, defaults to `True`): apply the DICOM VOI LUT / window when present.

    Inputs may be one image or a list mixing paths, bytes, PIL images, numpy arrays, torch tensors
    and pydicom datasets (see :func:`load_cxr_image`). ``return_tensors="pt"`` / ``"np"`` give
    ``pixel_values`` float32 ``(B, C, H, W)``; ``None`` gives a list of ``(C, H, W)`` numpy arrays.
    Defaults are the released CheXFound model's (512 x 512); 224-px models pass ``size=224,
    crop_size=224``.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = CXRImageProcessorKwargs
    default_to_square = False  # an int `size` is the shortest edge, as torchvision's Resize(int)

    do_resize = True
    size = {"shortest_edge": 512}
    resample = PILImageResampling.BICUBIC
    do_pad = False
    pad_size = None
    do_center_crop = True
    crop_size = {"height": 512, "width": 512}
    do_minmax_rescale = True
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    num_channels = 3
    apply_voi_lut = True
    rescale_factor = None  # not used: intensities are scaled by input type (load_cxr_image)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)
        self._validate_preprocess_kwargs(**{key: getattr(self, key) for key in self._valid_kwargs_names})

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        for option in _UNSUPPORTED_OPTIONS:
            if kwargs.get(option):
                raise ValueError(
                    f"CXRImageProcessor does not support {option}=True: intensities are scaled by input type "
                    "(see load_cxr_image), and images are made grey and replicated to num_channels."
                )
        super()._validate_preprocess_kwargs(**kwargs)
        if kwargs.get("num_channels") not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {kwargs.get('num_channels')!r}.")
        if kwargs.get("do_normalize"):
            for key in ("image_mean", "image_std"):
                values = _per_channel(kwargs[key], kwargs["num_channels"], key)
                if key == "image_std" and (values <= 0).any():
                    raise ValueError(f"image_std must be positive, got {kwargs[key]!r}.")
        if kwargs.get("do_resize"):
            _check_size_keys(kwargs["size"], "size")
            if kwargs["resample"] not in _TORCH_RESIZE_MODES:
                raise ValueError(
                    f"resample={kwargs['resample']!r} is not supported; use PILImageResampling.BICUBIC, BILINEAR "
                    "or NEAREST."
                )
        if kwargs.get("do_center_crop"):
            _check_size_keys(kwargs["crop_size"], "crop_size", allowed=({"height", "width"},))
        if kwargs.get("do_pad"):
            _check_pad_settings(kwargs)

    def fetch_images(self, image_url_or_urls):
        """Return the inputs unchanged: :func:`load_cxr_image` reads paths, bytes and DICOM itself at full
        precision. transformers' default (used by ``ProcessorMixin.__call__``) decodes paths with ``load_image``
        to 8-bit RGB, which turns a 16-bit PNG white and cannot read DICOM."""
        return image_url_or_urls

    def _preprocess_image_like_inputs(self, images, *args, **kwargs) -> BatchFeature:
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("images is an empty list; pass at least one image.")
            named = [(f"images[{index}] ({_describe(image)})", image) for index, image in enumerate(images)]
        else:
            named = [(f"images ({_describe(images)})", images)]
        processed = []
        for name, image in named:
            grey = load_cxr_image(
                image,
                apply_voi_lut=kwargs["apply_voi_lut"],
                input_data_format=kwargs.get("input_data_format"),
                name=name,
            )
            processed.append(self._preprocess_one(grey, name, **kwargs))
        return _to_batch_feature(processed, kwargs.get("return_tensors"), kwargs.get("device"))

    def _preprocess_one(
        self,
        grey: np.ndarray,
        name: str,
        *,
        do_resize: bool,
        size,
        resample,
        do_center_crop: bool,
        crop_size,
        do_pad: bool,
        pad_size,
        do_minmax_rescale: bool,
        do_normalize: bool,
        image_mean,
        image_std,
        num_channels: int,
        **unused,
    ) -> torch.Tensor:
        """float32 grey (H, W) -> float32 (num_channels, H', W').

        The arithmetic is the documented sequence, op for op (so values are bit-identical to applying
        `resize_grey`, `center_crop_grey`, `minmax_rescale` and `(x - mean) / std` in turn, with `pad_grey`
        between the resize and the crop when `do_pad`); it only avoids temporaries: one min/max pass of the
        input serves the constant check and the resize clamp, and the min-max and normalisation steps write
        into the output tensor in place.
        """
        image = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None, None]  # (1, 1, H, W)
        value_range = None
        if do_minmax_rescale or do_resize:
            value_range = torch.aminmax(image)
        if do_minmax_rescale:
            # Checked before resizing: resampling ripple would give a constant image a spurious range that
            # min-max then stretches to [0, 1].
            _check_not_constant(value_range, name)
        if do_resize:
            image = resize_grey(image, _resize_output_size(image.shape[-2:], size), resample, value_range=value_range)
        if do_pad:
            if do_minmax_rescale:
                # Before padding: the black border must stay black and must not become the image's minimum.
                unresized = image.shape[-2:] == grey.shape
                image = minmax_rescale(image, name, value_range if unresized else None)
            image = pad_grey(image, (pad_size["height"], pad_size["width"]), name)
        if do_center_crop:
            image = center_crop_grey(image, (crop_size["height"], crop_size["width"]), name)
        grey_plane = image[0, 0]
        if do_minmax_rescale and not do_pad:
            unchanged = image.shape[-2:] == grey.shape  # no resize, no crop: the input's range holds
            grey_plane = minmax_rescale(grey_plane, name, value_range if unchanged else None)
        if not do_normalize:
            return grey_plane.expand(num_channels, -1, -1).contiguous()
        mean = torch.from_numpy(_per_channel(image_mean, num_channels, "image_mean"))[:, None, None]
        std = torch.from_numpy(_per_channel(image_std, num_channels, "image_std"))[:, None, None]
        out = torch.empty((num_channels, *grey_plane.shape), dtype=torch.float32)
        return torch.sub(grey_plane.expand(num_channels, -1, -1), mean, out=out).div_(std)


def _check_size_keys(size, param: str, allowed=_ALLOWED_SIZE_KEYS) -> None:
    keys = set(dict(size))
    if keys not in [set(option) for option in allowed]:
        options = " or ".join(str(sorted(option)) for option in allowed)
        raise ValueError(f"{param} must have the keys {options}, got {dict(size)}.")
    if any(int(value) <= 0 for value in dict(size).values()):
        raise ValueError(f"{param} values must be positive, got {dict(size)}.")


def _check_pad_settings(kwargs) -> None:
    """`do_pad` needs a {height, width} `pad_size` that holds a `longest_edge` resize and covers `crop_size`
    (other resizes depend on the image and are checked per image by `pad_grey`)."""
    if kwargs.get("pad_size") is None:
        raise ValueError("do_pad=True needs pad_size ({'height': h, 'width': w}, or an int for a square).")
    _check_size_keys(kwargs["pad_size"], "pad_size", allowed=({"height", "width"},))
    pad_height, pad_width = int(kwargs["pad_size"]["height"]), int(kwargs["pad_size"]["width"])
    longest = dict(kwargs["size"]).get("longest_edge") if kwargs.get("do_resize") else None
    if longest is not None and int(longest) > min(pad_height, pad_width):
        raise ValueError(
            f"size['longest_edge']={longest} does not fit in pad_size {pad_height}x{pad_width}; the letterbox pads "
            "to at least the longest edge (MGCA: longest_edge = pad_size = 256)."
        )
    if kwargs.get("do_center_crop"):
        crop_height, crop_width = int(kwargs["crop_size"]["height"]), int(kwargs["crop_size"]["width"])
        if crop_height > pad_height or crop_width > pad_width:
            raise ValueError(
                f"crop_size {crop_height}x{crop_width} is larger than pad_size {pad_height}x{pad_width}; the centre "
                "crop is cut from the padded image (MGCA: 224 from 256)."
            )


def _per_channel(values, num_channels: int, key: str) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if array.ndim != 1 or len(array) not in (1, num_channels):
        expected = "1 value" if num_channels == 1 else f"1 or {num_channels} values"
        raise ValueError(
            f"{key} has {array.size} values {tuple(array.tolist())}; num_channels={num_channels} needs {expected}."
        )
    return np.broadcast_to(array, (num_channels,)).copy()


def _resize_output_size(input_size: Sequence[int], size) -> tuple[int, int]:
    """(H, W) after resizing: the shortest edge to ``size["shortest_edge"]`` with the long edge
    ``int(shortest * long / short)`` (torchvision's rule, so CheXFound's geometry is reproduced), the longest
    edge to ``size["longest_edge"]`` (:func:`_longest_edge_output_size`), or exactly ``(height, width)``."""
    height, width = int(input_size[0]), int(input_size[1])
    if size.get("longest_edge") is not None:
        return _longest_edge_output_size(height, width, int(size["longest_edge"]))
    if size.get("shortest_edge") is None:
        return int(size["height"]), int(size["width"])
    shortest = int(size["shortest_edge"])
    short, long = min(height, width), max(height, width)
    new_long = int(shortest * long / short)
    return (shortest, new_long) if height <= width else (new_long, shortest)


def _longest_edge_output_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(H, W) with the longer side ``longest`` and the shorter ``int(short * (longest / long))``: MGCA's
    ``resize_img`` computes the scale factor first and truncates, and the same order of operations gives its
    sizes to the pixel. At least 1 pixel, so extreme aspect ratios still resize."""
    scale = longest / max(height, width)
    if height >= width:
        return longest, max(1, int(width * scale))
    return max(1, int(height * scale)), longest


def resize_grey(
    image: torch.Tensor, output_size: tuple[int, int], resample=PILImageResampling.BICUBIC, value_range=None
) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` float images to ``output_size`` (H', W') with PIL-style antialiasing.

    Bicubic/bilinear use ``torch.nn.functional.interpolate(..., antialias=True)`` (the filters of
    PIL's resize, which torchvision applies to PIL images). The result is clamped to the nominal
    [0, 1] scale widened to the image's own range: on [0, 1] images this is what PIL's 8-bit
    resize does (it clips bicubic overshoot at 0 and 255, and CheXFound's min-max rescale sees
    that), and raw-valued float images keep their range. `value_range`, the `torch.aminmax` of a
    one-image, one-channel input when the caller has it already, saves that pass.
    """
    if tuple(image.shape[-2:]) == tuple(output_size):
        return image
    mode = _TORCH_RESIZE_MODES[resample]
    if mode == "nearest-exact":
        return F.interpolate(image, size=output_size, mode=mode)
    if value_range is not None and image.shape[:2] == (1, 1):
        low, high = (value.reshape(1, 1) for value in value_range)
    else:
        low, high = torch.aminmax(image.flatten(-2), dim=-1)  # one pass; (N, C) each
    low, high = low.clamp(max=0.0)[..., None, None], high.clamp(min=1.0)[..., None, None]
    resized = F.interpolate(image, size=output_size, mode=mode, align_corners=False, antialias=True)
    return resized.clamp_(min=low, max=high)


def center_crop_grey(image: torch.Tensor, crop_size: tuple[int, int], name: str = "image") -> torch.Tensor:
    """Centre crop ``(..., H, W)`` to ``crop_size``; offsets ``int(round((H - h) / 2))`` as torchvision."""
    height, width = image.shape[-2:]
    crop_height, crop_width = crop_size
    if crop_height > height or crop_width > width:
        raise ValueError(
            f"{name}: image is {height}x{width} after resizing, smaller than crop_size {crop_height}x{crop_width}; "
            "resize to at least the crop size (do_resize=True, size >= crop_size) or lower crop_size."
        )
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return image[..., top : top + crop_height, left : left + crop_width]


def pad_grey(image: torch.Tensor, pad_size: tuple[int, int], name: str = "image") -> torch.Tensor:
    """Zero-pad ``(..., H, W)`` to ``pad_size`` (H', W'), centred as MGCA's ``resize_img``: ``floor`` of each
    margin before (top / left) and ``ceil`` after. 0 is black on the grey scale."""
    height, width = image.shape[-2:]
    pad_height, pad_width = pad_size
    if height > pad_height or width > pad_width:
        raise ValueError(
            f"{name}: image is {height}x{width} after resizing, larger than pad_size {pad_height}x{pad_width}; resize "
            "the longest edge to at most the pad size (size={'longest_edge': n}) or raise pad_size."
        )
    top, left = (pad_height - height) // 2, (pad_width - width) // 2
    return F.pad(image, (left, pad_width - width - left, top, pad_height - height - top), value=0.0)


def _check_not_constant(value_range: tuple[torch.Tensor, torch.Tensor], name: str) -> None:
    """`value_range` is the image's `torch.aminmax`."""
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(
            f"{name}: the image is constant (every pixel = {low:g}), so min-max rescaling is undefined; check the "
            "file, or set do_minmax_rescale=False."
        )


def minmax_rescale(image: torch.Tensor, name: str = "image", value_range=None) -> torch.Tensor:
    """Per-image min-max rescale to [0, 1]: ``(x - min(x)) / (max(x) - min(x))`` (CheXFound's
    evaluation ``RescaleImage``; per channel there, and our channels are one grey image).
    `value_range`: the image's `torch.aminmax` when the caller has it already."""
    low, high = torch.aminmax(image) if value_range is None else value_range
    if not bool(high > low):
        raise ValueError(
            f"{name}: the image is constant (every pixel = {float(low):g}) after resize and crop, so min-max "
            "rescaling is undefined; check the file, or set do_minmax_rescale=False."
        )
    return (image - low).div_(high - low)  # in place on the new tensor: one temporary instead of two


def _to_batch_feature(images: list[torch.Tensor], return_tensors, device) -> BatchFeature:
    kind = getattr(return_tensors, "value", return_tensors)
    if kind is None:
        return BatchFeature(data={"pixel_values": [image.numpy() for image in images]})
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"Images have different shapes after preprocessing {sorted(shapes)}; enable do_center_crop or do_pad (or "
            "a fixed height/width size) to stack them, or pass return_tensors=None to get a list."
        )
    stacked = torch.stack(images)
    if kind == "pt":
        return BatchFeature(data={"pixel_values": stacked.to(device) if device is not None else stacked})
    if kind == "np":
        return BatchFeature(data={"pixel_values": stacked.numpy()})
    raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")


# Hub route: `save_pretrained` copies this file next to the config and writes
# `auto_map.AutoImageProcessor`, so `trust_remote_code=True` loads it without cxrfm installed.
CXRImageProcessor.register_for_auto_class()

# Library route: `AutoImageProcessor.from_pretrained(folder)` finds this class through the
# `image_processor_type` saved in preprocessor_config.json. transformers looks the name up among
# registered classes (`IMAGE_PROCESSOR_MAPPING._extra_content`), so the key is the class name (the
# processor serves every model family, no single config class owns it); both backend slots point
# here so no backend fallback is logged. Only the installed package registers: a copy loaded as
# remote code must not claim the name, or a later folder with its own code version would be
# resolved to this one.
if __name__.split(".")[0] == "cxrfm":
    AutoImageProcessor.register(
        "CXRImageProcessor",
        image_processor_classes={"torchvision": CXRImageProcessor, "pil": CXRImageProcessor},
        exist_ok=True,
    )

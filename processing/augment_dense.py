"""Geometric augmentation that keeps masks and boxes aligned with their radiograph (dense transfer, issue 9).

A `DenseSample` is a grey image on the [0, 1] display scale with its per-class masks and its boxes. Every
geometric operation goes through torchvision's `transforms.v2.functional` on `tv_tensors`, which dispatches on
the type: the image is resampled bilinearly, masks with nearest neighbour (labels stay 0/1), boxes are mapped as
coordinates (a rotated box becomes its enclosing box) and boxes that leave the frame are clamped, then dropped
when they fall under `min_box_size` pixels. Randomness comes from an explicit `torch.Generator`; `sample_params`
and `apply` are separate so one draw can be replayed (and tested) on an image and its targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .augment_cxr import sample_resized_crop


@dataclass(frozen=True)
class DenseSample:
    """image (1, H, W) float in [0, 1]; masks (K, H, W) uint8, one channel per target class; boxes (M, 4) float
    (x_min, y_min, x_max, y_max) in pixels; box_labels (M,) int64 (class index into the target classes)."""

    image: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    box_labels: torch.Tensor


@dataclass(frozen=True)
class DenseAugmentationParams:
    """One draw: rotation angle (degrees), crop box (top, left, height, width) in input pixels, flip."""

    angle: float
    crop: tuple[int, int, int, int]
    flip: bool


def _wrap(sample: DenseSample):
    height, width = sample.image.shape[-2:]
    return (
        tv_tensors.Image(sample.image),
        tv_tensors.Mask(sample.masks),
        tv_tensors.BoundingBoxes(sample.boxes.reshape(-1, 4), format="XYXY", canvas_size=(height, width)),
    )


def _unwrap(image, masks, boxes, labels: torch.Tensor, min_box_size: float) -> DenseSample:
    boxes = TF.clamp_bounding_boxes(boxes)
    plain = boxes.as_subclass(torch.Tensor)
    keep = ((plain[:, 2] - plain[:, 0]) >= min_box_size) & ((plain[:, 3] - plain[:, 1]) >= min_box_size)
    return DenseSample(
        image=image.as_subclass(torch.Tensor),
        masks=masks.as_subclass(torch.Tensor),
        boxes=plain[keep].float(),
        box_labels=labels[keep],
    )


def resize_sample(sample: DenseSample, size: int, min_box_size: float = 1.0) -> DenseSample:
    """Resize image, masks and boxes to size x size (the aspect ratio is not kept: every encoder here takes a
    square input, and boxes are mapped with the same per-axis scale as the pixels)."""
    image, masks, boxes = _wrap(sample)
    image = TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    masks = TF.resize(masks, [size, size], interpolation=InterpolationMode.NEAREST)
    boxes = TF.resize(boxes, [size, size])
    return _unwrap(image.clamp(0, 1), masks, boxes, sample.box_labels, min_box_size)


class DenseAugmentation:
    """Random rotation -> resized crop back to the input size -> horizontal flip, on image, masks and boxes alike.

    Args:
        rotation: (min, max) angle in degrees (0, 0 disables it).
        scale: (min, max) crop area as a fraction of the image.
        ratio: (min, max) crop aspect ratio w/h.
        flip_probability: probability of a horizontal flip.
        min_box_size: boxes narrower or shorter than this (pixels) after the transform are dropped.
    """

    def __init__(
        self,
        rotation: tuple[float, float] = (-10.0, 10.0),
        scale: tuple[float, float] = (0.7, 1.0),
        ratio: tuple[float, float] = (0.9, 1.1),
        flip_probability: float = 0.5,
        min_box_size: float = 1.0,
    ):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
        self.rotation, self.scale, self.ratio = rotation, scale, ratio
        self.flip_probability, self.min_box_size = flip_probability, min_box_size

    def sample_params(self, height: int, width: int, generator: torch.Generator | None) -> DenseAugmentationParams:
        low, high = self.rotation
        angle = low + (high - low) * torch.rand((), generator=generator).item()
        crop = sample_resized_crop(height, width, self.scale, self.ratio, generator)
        flip = bool(torch.rand((), generator=generator).item() < self.flip_probability)
        return DenseAugmentationParams(angle=angle, crop=crop, flip=flip)

    def apply(self, sample: DenseSample, params: DenseAugmentationParams) -> DenseSample:
        height, width = sample.image.shape[-2:]
        image, masks, boxes = _wrap(sample)
        if params.angle:
            image = TF.rotate(image, params.angle, interpolation=InterpolationMode.BILINEAR)
            masks = TF.rotate(masks, params.angle, interpolation=InterpolationMode.NEAREST)
            boxes = TF.rotate(boxes, params.angle)
        top, left, crop_h, crop_w = params.crop
        image = TF.resized_crop(image, top, left, crop_h, crop_w, [height, width],
                                interpolation=InterpolationMode.BILINEAR, antialias=True)
        masks = TF.resized_crop(masks, top, left, crop_h, crop_w, [height, width],
                                interpolation=InterpolationMode.NEAREST)
        boxes = TF.resized_crop(boxes, top, left, crop_h, crop_w, [height, width])
        if params.flip:
            image, masks, boxes = TF.horizontal_flip(image), TF.horizontal_flip(masks), TF.horizontal_flip(boxes)
        return _unwrap(image.clamp(0, 1), masks, boxes, sample.box_labels, self.min_box_size)

    def __call__(self, sample: DenseSample, generator: torch.Generator | None = None) -> DenseSample:
        height, width = sample.image.shape[-2:]
        return self.apply(sample, self.sample_params(height, width, generator))


__all__ = ["DenseAugmentation", "DenseAugmentationParams", "DenseSample", "resize_sample"]

"""Weak and strong image augmentations of the relaxed-CLIP paper (paper 002, supplement §1.1) for grey radiographs.

Weak (WA): rotation in (-20, 20) degrees, resized crop with area scale (0.8, 1.0) and aspect ratio (0.9, 1.1),
horizontal flip (p = 0.5), brightness and contrast factors in (0.5, 2). No hue or saturation change: radiographs
are monochrome. Strong (SA): the same with rotation (-30, 30), scale (0.7, 1.0) and ratio (0.8, 1.2).

They work on `pixel_values` as the image processor returns them, (C, H, W) or (B, C, H, W) tensors: given the
processor's `image_mean` / `image_std`, values are brought back to the [0, 1] display scale, augmented there (so
brightness and contrast act as on an image, and rotation fills with black), and normalised again. Applying them
after the processor matters because `CXRImageProcessor` min-max rescales each image, which would undo a brightness
or contrast change made before it. Randomness comes from an explicit `torch.Generator`; `sample_params` and
`apply` are separate so one draw can be replayed.

`RandomCrop` is MGCA's pre-training augmentation (paper 004, official `DataTransforms`): a fixed-size crop at a
uniformly random offset of the letterboxed image, the processor's output without its centre crop.
"""

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class AugmentationParams:
    """One draw: rotation angle (degrees), crop box (top, left, height, width) in pixels, flip, brightness and
    contrast factors (applied in that order)."""

    angle: float
    crop: tuple[int, int, int, int]
    flip: bool
    brightness: float
    contrast: float


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def sample_resized_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """Crop box (top, left, h, w) of a random resized crop: area fraction ~ U(scale), log aspect ratio w/h ~
    U(log ratio), up to 10 tries, else the central crop with the ratio clamped (torchvision's RandomResizedCrop rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class CXRAugmentation:
    """Random rotation -> resized crop (back to the input size) -> horizontal flip -> brightness -> contrast.

    Args:
        rotation: (min, max) angle in degrees.
        scale: (min, max) crop area as a fraction of the image.
        ratio: (min, max) crop aspect ratio w/h.
        flip_probability: probability of a horizontal flip.
        brightness, contrast: (min, max) multiplicative factors (1 = unchanged).
        image_mean, image_std: per-channel normalisation of the input `pixel_values`; None when the input is
            already on the [0, 1] display scale.
    """

    def __init__(
        self,
        rotation: tuple[float, float],
        scale: tuple[float, float],
        ratio: tuple[float, float],
        flip_probability: float = 0.5,
        brightness: tuple[float, float] = (0.5, 2.0),
        contrast: tuple[float, float] = (0.5, 2.0),
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
    ):
        for name, (low, high) in (("rotation", rotation), ("scale", scale), ("ratio", ratio),
                                  ("brightness", brightness), ("contrast", contrast)):
            if low > high:
                raise ValueError(f"CXRAugmentation.{name} must be (min, max) with min <= max, got {(low, high)}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"CXRAugmentation.scale is an area fraction in (0, 1], got {scale}.")
        if (image_mean is None) != (image_std is None):
            raise ValueError("CXRAugmentation needs both image_mean and image_std, or neither.")
        self.rotation, self.scale, self.ratio = rotation, scale, ratio
        self.flip_probability = flip_probability
        self.brightness, self.contrast = brightness, contrast
        self.image_mean, self.image_std = image_mean, image_std

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rotation={self.rotation}, scale={self.scale}, ratio={self.ratio}, "
            f"flip_probability={self.flip_probability}, brightness={self.brightness}, contrast={self.contrast})"
        )

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> AugmentationParams:
        """Draw one set of parameters for an image of `height` x `width`."""
        return AugmentationParams(
            angle=_uniform(*self.rotation, generator),
            crop=sample_resized_crop(height, width, self.scale, self.ratio, generator),
            flip=bool(torch.rand((), generator=generator).item() < self.flip_probability),
            brightness=_uniform(*self.brightness, generator),
            contrast=_uniform(*self.contrast, generator),
        )

    def apply(self, image: torch.Tensor, params: AugmentationParams) -> torch.Tensor:
        """Augment one (C, H, W) image with given parameters; same shape and scale out."""
        if image.ndim != 3:
            raise ValueError(f"CXRAugmentation.apply expects one (C, H, W) image, got shape {tuple(image.shape)}.")
        height, width = image.shape[-2:]
        display = self._to_display(image)
        display = TF.rotate(display, params.angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        display = TF.resized_crop(display, *params.crop, size=[height, width], antialias=True)
        if params.flip:
            display = TF.horizontal_flip(display)
        display = TF.adjust_brightness(display, params.brightness)
        display = TF.adjust_contrast(display, params.contrast)
        return self._from_display(display)

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment (C, H, W) or (B, C, H, W) `pixel_values`, each image with its own draw."""
        if pixel_values.ndim == 3:
            return self.apply(pixel_values, self.sample_params(*pixel_values.shape[-2:], generator))
        if pixel_values.ndim != 4:
            raise ValueError(f"CXRAugmentation expects (C, H, W) or (B, C, H, W), got shape {tuple(pixel_values.shape)}.")
        return torch.stack([self(image, generator) for image in pixel_values])

    def _stats(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        if mean.shape[0] not in (1, image.shape[0]):
            raise ValueError(
                f"CXRAugmentation has {mean.shape[0]} image_mean values for a {image.shape[0]}-channel image."
            )
        return mean, std

    def _to_display(self, image: torch.Tensor) -> torch.Tensor:
        if self.image_mean is None:
            return image
        mean, std = self._stats(image)
        return image * std + mean

    def _from_display(self, image: torch.Tensor) -> torch.Tensor:
        if self.image_mean is None:
            return image
        mean, std = self._stats(image)
        return (image - mean) / std


def weak_augmentation(image_mean: list[float] | None = None, image_std: list[float] | None = None) -> CXRAugmentation:
    """The paper's weak augmentation (WA): rotation (-20, 20), crop scale (0.8, 1.0), ratio (0.9, 1.1), flip,
    brightness and contrast (0.5, 2)."""
    return CXRAugmentation((-20.0, 20.0), (0.8, 1.0), (0.9, 1.1), image_mean=image_mean, image_std=image_std)


def strong_augmentation(image_mean: list[float] | None = None, image_std: list[float] | None = None) -> CXRAugmentation:
    """The paper's strong augmentation (SA): rotation (-30, 30), crop scale (0.7, 1.0), ratio (0.8, 1.2), flip,
    brightness and contrast (0.5, 2)."""
    return CXRAugmentation((-30.0, 30.0), (0.7, 1.0), (0.8, 1.2), image_mean=image_mean, image_std=image_std)


class RandomCrop:
    """MGCA's training crop: a `height` x `width` window at a uniformly random offset (official pre-training
    `RandomCrop(224)` of the 256 x 256 letterboxed image; its validation takes the centre crop instead).

    The offset is drawn as torchvision's `RandomCrop.get_params` does (top, then left, each `randint` over every
    valid position). Cropping moves no value, so it acts on normalised `pixel_values` directly.

    Args:
        size: crop side, or (height, width).
    """

    def __init__(self, size: int | tuple[int, int]):
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height < 1 or width < 1:
            raise ValueError(f"RandomCrop.size must be positive, got {size}.")
        self.height, self.width = int(height), int(width)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size=({self.height}, {self.width}))"

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        """(top, left) of the crop in an image of `height` x `width`."""
        if self.height > height or self.width > width:
            raise ValueError(
                f"RandomCrop.size {self.height}x{self.width} is larger than the {height}x{width} image; crop from a "
                "letterboxed image at least as large (MGCA: 224 from 256)."
            )
        top = int(torch.randint(0, height - self.height + 1, (), generator=generator))
        left = int(torch.randint(0, width - self.width + 1, (), generator=generator))
        return top, left

    def apply(self, image: torch.Tensor, params: tuple[int, int]) -> torch.Tensor:
        """The window of one (C, H, W) image at (top, left)."""
        if image.ndim != 3:
            raise ValueError(f"RandomCrop.apply expects one (C, H, W) image, got shape {tuple(image.shape)}.")
        top, left = params
        return image[:, top : top + self.height, left : left + self.width]

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Crop (C, H, W) or (B, C, H, W) `pixel_values`, each image with its own draw."""
        if pixel_values.ndim == 3:
            return self.apply(pixel_values, self.sample_params(*pixel_values.shape[-2:], generator))
        if pixel_values.ndim != 4:
            raise ValueError(f"RandomCrop expects (C, H, W) or (B, C, H, W), got shape {tuple(pixel_values.shape)}.")
        return torch.stack([self(image, generator) for image in pixel_values])


# DINOv2/CheXFound multi-crop (facebookresearch/dinov2 `data/augmentations.py`, identical in RPIDIAL/CheXFound).
# Blur probabilities of (global crop 1, global crop 2, local crops): the official GaussianBlur passes 1 - p to
# RandomApply (dinov2 PR #411), so the released models were trained with 0.0 / 0.9 / 0.5 instead of the intended
# 1.0 / 0.1 / 0.5.
BLUR_PROBABILITIES_AS_RUN = (0.0, 0.9, 0.5)
BLUR_PROBABILITIES_AS_INTENDED = (1.0, 0.1, 0.5)


@dataclass(frozen=True)
class CropParams:
    """One multi-crop view: crop box (top, left, height, width), flip, brightness / contrast factors (1 = no jitter),
    Gaussian-blur sigma (None = no blur) and solarisation."""

    crop: tuple[int, int, int, int]
    flip: bool
    brightness: float
    contrast: float
    blur_sigma: float | None
    solarize: bool


class MultiCropAugmentation:
    """DINOv2 multi-crop for grey radiographs: 2 global + n local random resized crops of one image.

    Per view (official order): random resized crop (bicubic, aspect 3/4..4/3) -> horizontal flip (0.5) -> with
    probability `jitter_probability` brightness then contrast factors U(1 - 0.4, 1 + 0.4) -> Gaussian blur
    (kernel 9, sigma U(0.1, 2)) with the view's blur probability -> solarisation at 128/255 (second global crop
    only, p 0.2). ColorJitter's saturation and hue and RandomGrayscale are left out: they do nothing to a grey
    image. ColorJitter applies brightness and contrast in random order; here the order is fixed.

    Input: one `(C, H, W)` image on the [0, 1] display scale. Output: `(2, C, S_g, S_g)` and `(n, C, S_l, S_l)`,
    normalised with `image_mean` / `image_std` when given.

    Args:
        global_size, local_size: crop sides S_g, S_l (CheXFound stages: 224/96, 336/128, 448/128, 512/144).
        n_local_crops: n (8).
        global_scale, local_scale: crop area fractions ((0.32, 1) and (0.05, 0.32)).
        blur_probabilities: (global 1, global 2, local); default the behaviour the released models were trained
            with (`BLUR_PROBABILITIES_AS_RUN`), `BLUR_PROBABILITIES_AS_INTENDED` for the intended one.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local_crops: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        jitter_probability: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        blur_probabilities: tuple[float, float, float] = BLUR_PROBABILITIES_AS_RUN,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_probability: float = 0.2,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
    ):
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"MultiCropAugmentation.{name} must be (min, max) area fractions in (0, 1], got {(low, high)}.")
        if len(blur_probabilities) != 3:
            raise ValueError(f"MultiCropAugmentation.blur_probabilities needs 3 values (global 1, global 2, local), got {blur_probabilities}.")
        if (image_mean is None) != (image_std is None):
            raise ValueError("MultiCropAugmentation needs both image_mean and image_std, or neither.")
        self.global_size, self.local_size, self.n_local_crops = global_size, local_size, n_local_crops
        self.global_scale, self.local_scale = global_scale, local_scale
        self.jitter_probability, self.brightness, self.contrast = jitter_probability, brightness, contrast
        self.blur_probabilities, self.blur_sigma = tuple(blur_probabilities), blur_sigma
        self.solarize_probability = solarize_probability
        self.image_mean, self.image_std = image_mean, image_std

    def _view(self, height, width, scale, blur_p, solarize_p, generator) -> CropParams:
        crop = sample_resized_crop(height, width, scale, (3 / 4, 4 / 3), generator)
        flip = bool(torch.rand((), generator=generator).item() < 0.5)
        brightness = contrast = 1.0
        if torch.rand((), generator=generator).item() < self.jitter_probability:
            brightness = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness, generator)
            contrast = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast, generator)
        sigma = None
        if torch.rand((), generator=generator).item() < blur_p:
            sigma = _uniform(*self.blur_sigma, generator)
        solarize = bool(torch.rand((), generator=generator).item() < solarize_p)
        return CropParams(crop, flip, brightness, contrast, sigma, solarize)

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> list[CropParams]:
        """2 global then `n_local_crops` local views of an image of `height` x `width`."""
        blur_1, blur_2, blur_local = self.blur_probabilities
        views = [
            self._view(height, width, self.global_scale, blur_1, 0.0, generator),
            self._view(height, width, self.global_scale, blur_2, self.solarize_probability, generator),
        ]
        views += [self._view(height, width, self.local_scale, blur_local, 0.0, generator) for _ in range(self.n_local_crops)]
        return views

    def _apply_view(self, image: torch.Tensor, view: CropParams, size: int) -> torch.Tensor:
        out = TF.resized_crop(image, *view.crop, size=[size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        out = out.clamp(0.0, 1.0)  # bicubic overshoot; the official PIL path stays in 0..255
        if view.flip:
            out = TF.horizontal_flip(out)
        if view.brightness != 1.0 or view.contrast != 1.0:
            out = TF.adjust_contrast(TF.adjust_brightness(out, view.brightness), view.contrast)
        if view.blur_sigma is not None:
            out = TF.gaussian_blur(out, kernel_size=[9, 9], sigma=[view.blur_sigma, view.blur_sigma])
        if view.solarize:
            out = TF.solarize(out, threshold=128 / 255)
        if self.image_mean is not None:
            mean = torch.as_tensor(self.image_mean, dtype=out.dtype).reshape(-1, 1, 1)
            std = torch.as_tensor(self.image_std, dtype=out.dtype).reshape(-1, 1, 1)
            out = (out - mean) / std
        return out

    def apply(self, image: torch.Tensor, params: list[CropParams]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(C, H, W)` image on [0, 1] -> `(global crops (2, C, S_g, S_g), local crops (n, C, S_l, S_l))`."""
        if image.ndim != 3:
            raise ValueError(f"MultiCropAugmentation.apply expects one (C, H, W) image, got shape {tuple(image.shape)}.")
        global_crops = torch.stack([self._apply_view(image, view, self.global_size) for view in params[:2]])
        local_views = [self._apply_view(image, view, self.local_size) for view in params[2:]]
        channels = image.shape[0]
        local_crops = (
            torch.stack(local_views) if local_views else image.new_empty(0, channels, self.local_size, self.local_size)
        )
        return global_crops, local_crops

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(image, self.sample_params(*image.shape[-2:], generator))


__all__ = [
    "BLUR_PROBABILITIES_AS_INTENDED",
    "BLUR_PROBABILITIES_AS_RUN",
    "AugmentationParams",
    "CXRAugmentation",
    "CropParams",
    "MultiCropAugmentation",
    "RandomCrop",
    "sample_resized_crop",
    "strong_augmentation",
    "weak_augmentation",
]

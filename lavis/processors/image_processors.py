"""Image processors that keep a region box consistent with the pixels: resize, box-safe crop, colour jitter, normalise.

`BoxImageProcessor(image, box)` takes a PIL image and an optional box (x1, y1, x2, y2 in pixels; or K boxes [K, 4])
and returns the normalised image tensor `[3, S, S]` and the box(es) normalised to [0, 1], or None without a box.
`BoxImageProcessor(image, boxes, masks)` also carries region masks (bool [K, H, W]) and returns them third, at
S x S. Boxes and masks follow the pixels through torchvision transforms v2 (`tv_tensors.BoundingBoxes`, `Mask`),
never by separate arithmetic.

Horizontal flip is off by default: referring expressions say "left" / "right", and flipping the image without
rewriting the text would teach the model the wrong side. Random choices use torch's global RNG, which the loader
seeds per sample, so an augmentation is reproducible and a resumed run sees the same pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union, overload

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lavis.common.registry import PROCESSORS

EVA_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
EVA_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


BoxesLike = Union[Sequence[float], Sequence[Sequence[float]], np.ndarray, torch.Tensor]  # [4] or [K, 4] x1y1x2y2


class ImageReadError(ValueError):
    """An image file that is missing or cannot be decoded; datasets turn it into a BadSampleError."""


class RegionMaskError(ValueError):
    """Region masks that do not fit the image, or one that is (or the resize leaves) empty: a bad sample."""


def load_rgb_image(source: str | Path | bytes) -> Image.Image:
    """Open a path or encoded bytes as a fully decoded RGB image (decoding now surfaces truncated files here)."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {source}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        where = "<bytes>" if isinstance(source, bytes) else source
        raise ImageReadError(f"cannot decode image {where}: {e}") from None
    return image.convert("RGB")


def box_xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def check_box(box_xyxy: Sequence[float], width: int, height: int, tolerance: float) -> list[float]:
    """The box clipped to the image, or ValueError(reason) if it is not finite, empty, or outside the image.

    Annotation boxes often overshoot the border by a fraction of a pixel; up to `tolerance` pixels is clipped.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box {list(box_xyxy)} is not finite")
    if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise ValueError(f"box {list(box_xyxy)} lies outside the {width}x{height} image")
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise ValueError(f"box {list(box_xyxy)} has zero area inside the {width}x{height} image")
    return [x1, y1, x2, y2]


def truncated_box_pixels(box_xyxy: Sequence[float], width: int, height: int) -> list[float]:
    """The reference's pixel box: x clamped to [0, W], y to [0, H], then `int()` (whole pixels), in float32."""
    box = torch.as_tensor([float(v) for v in box_xyxy], dtype=torch.float32)
    box[0::2].clamp_(min=0, max=width)
    box[1::2].clamp_(min=0, max=height)
    return [float(v) for v in box.int().tolist()]


def reference_box_pixels(box_xywh: Sequence[float], width: int, height: int) -> list[float]:
    """x1y1wh -> the reference's truncated x1y1x2y2 (general_box_caption_datasets.py:67-79), x2 = x1 + w in float32."""
    box = torch.as_tensor([float(v) for v in box_xywh], dtype=torch.float32)
    box[2:] += box[:2]
    return truncated_box_pixels(box.tolist(), width, height)


def _sample_span(size: int, lo_edge: float, hi_edge: float, min_scale: float) -> tuple[int, int]:
    """A random integer (start, length) along one axis that contains [lo_edge, hi_edge] and is >= min_scale * size."""
    keep_lo, keep_hi = math.floor(lo_edge), math.ceil(hi_edge)
    min_len = min(size, max(keep_hi - keep_lo, math.ceil(min_scale * size), 1))
    length = int(torch.randint(min_len, size + 1, ()).item())
    first, last = max(0, keep_hi - length), min(keep_lo, size - length)
    start = int(torch.randint(first, last + 1, ()).item())
    return start, length


def sample_box_safe_crop(
    height: int, width: int, box_xyxy: Optional[Sequence[float]], min_scale: float
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of a random crop that keeps the whole box; each side >= min_scale."""
    x1, y1, x2, y2 = box_xyxy if box_xyxy is not None else (width, height, 0, 0)  # no box: nothing to keep
    left, crop_w = _sample_span(width, x1, x2, min_scale)
    top, crop_h = _sample_span(height, y1, y2, min_scale)
    return top, left, crop_h, crop_w


@dataclass
class BoxImageConfig:
    image_size: int = 224
    mean: List[float] = field(default_factory=lambda: list(EVA_CLIP_MEAN))
    std: List[float] = field(default_factory=lambda: list(EVA_CLIP_STD))
    crop_prob: float = 0.0  # chance of a random crop that keeps the box inside
    crop_min_scale: float = 0.7  # smallest crop side, as a fraction of the image side
    color_jitter: float = 0.0  # brightness / contrast / saturation strength; 0 turns it off
    hflip_prob: float = 0.0  # keep 0 for referring text: "left" / "right" in the caption would become wrong
    box_tolerance: float = 1.0  # pixels a box may overshoot the image border before the sample is rejected
    # The reference's box: clamped and truncated to whole pixels before normalising (not a bug, a coarser box);
    # False keeps the sub-pixel box.
    truncate_box_pixels: bool = False

    def random_settings(self) -> list[str]:
        """The enabled random augmentations as 'field=value (off: neutral)'; empty: the output is deterministic."""
        return [f"{name}={getattr(self, name)} (off: 0)" for name in ("crop_prob", "color_jitter", "hflip_prob")
                if getattr(self, name) > 0]


@PROCESSORS.register("box_image")
class BoxImageProcessor:
    Config = BoxImageConfig

    def __init__(self, cfg: BoxImageConfig):
        if not 0.0 < cfg.crop_min_scale <= 1.0:
            raise ValueError(f"crop_min_scale must be in (0, 1], not {cfg.crop_min_scale}")
        self.cfg = cfg
        strength = cfg.color_jitter
        self.jitter = v2.ColorJitter(strength, strength, strength) if strength > 0 else None

    @classmethod
    def from_config(cls, cfg: BoxImageConfig) -> BoxImageProcessor:
        return cls(cfg)

    @overload
    def __call__(self, image: Image.Image, box_xyxy: Optional[BoxesLike] = None,
                 masks: None = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...

    @overload
    def __call__(self, image: Image.Image, box_xyxy: Optional[BoxesLike],
                 masks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]: ...

    def __call__(self, image, box_xyxy=None, masks=None):
        """(pixels [3, S, S], box(es) in [0, 1] or None) and, when `masks` is given, the masks [K, S, S] bool.

        `box_xyxy`: one box (4 numbers) -> region [4]; K boxes [K, 4] -> region [K, 4]. `masks`: bool [K, H, W]
        at the image's size; they take the same crop and flip as the pixels, then a nearest resize. The crop
        keeps every box and every mask's bounding box whole. A mask the resize empties raises RegionMaskError.
        """
        cfg = self.cfg
        # A PIL image stays one until resized: PIL's bicubic filter is BLIP's (BlipImageEvalProcessor resizes the PIL
        # image); torchvision's tensor resize differs from it by up to a grey level
        pixels = image if isinstance(image, Image.Image) else F.to_image(image)
        height, width = F.get_size(pixels)
        boxes, single_box = _boxes(box_xyxy, height, width)
        mask_stack = None if masks is None else _checked_masks(masks, height, width)
        if cfg.crop_prob > 0 and torch.rand(()).item() < cfg.crop_prob:
            keep = _kept_area(box_xyxy, mask_stack)
            top, left, crop_h, crop_w = sample_box_safe_crop(height, width, keep, cfg.crop_min_scale)
            pixels = F.crop(pixels, top, left, crop_h, crop_w)
            boxes = F.crop(boxes, top, left, crop_h, crop_w) if boxes is not None else None
            mask_stack = F.crop(mask_stack, top, left, crop_h, crop_w) if mask_stack is not None else None
        if cfg.hflip_prob > 0 and torch.rand(()).item() < cfg.hflip_prob:
            pixels = F.horizontal_flip(pixels)
            boxes = F.horizontal_flip(boxes) if boxes is not None else None
            mask_stack = F.horizontal_flip(mask_stack) if mask_stack is not None else None
        size = [cfg.image_size, cfg.image_size]
        pixels = F.to_image(F.resize(pixels, size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
        if self.jitter is not None:
            pixels = self.jitter(pixels)
        pixels = F.normalize(F.to_dtype(pixels, torch.float32, scale=True), mean=cfg.mean, std=cfg.std)
        pixels = pixels.as_subclass(torch.Tensor)
        region = None
        if boxes is not None:
            # Normalised by the canvas before the resize: the same box as resizing it, with one rounding (box / W,
            # as the reference divides).
            canvas_h, canvas_w = boxes.canvas_size
            scale = torch.tensor([canvas_w, canvas_h, canvas_w, canvas_h], dtype=torch.float32)
            region = (boxes.as_subclass(torch.Tensor) / scale).clamp(0.0, 1.0)
            region = region[0] if single_box else region
        if mask_stack is None:
            return pixels, region
        resized = F.resize(mask_stack, size, interpolation=v2.InterpolationMode.NEAREST)
        resized = resized.as_subclass(torch.Tensor).bool()
        emptied = [k for k in range(len(resized)) if not resized[k].any()]
        if emptied:
            raise RegionMaskError(f"region mask(s) {emptied} have no pixel left at {cfg.image_size}x{cfg.image_size} "
                                  "(the region is smaller than one resized pixel)")
        return pixels, region, resized


def _boxes(box_xyxy: Optional[BoxesLike], height: int, width: int) -> tuple[Optional[tv_tensors.BoundingBoxes], bool]:
    """The box(es) as [K, 4] BoundingBoxes on the image, and whether one box (4 numbers) was given."""
    if box_xyxy is None:
        return None, False
    values = torch.as_tensor(np.asarray(box_xyxy, dtype=np.float32))
    if values.shape[-1] != 4 or values.ndim not in (1, 2):
        raise ValueError(f"boxes must be 4 numbers or [K, 4], got shape {tuple(values.shape)}")
    boxes = tv_tensors.BoundingBoxes(values.reshape(-1, 4), format="XYXY", canvas_size=(height, width))
    return boxes, values.ndim == 1


def _checked_masks(masks, height: int, width: int) -> tv_tensors.Mask:
    stack = torch.as_tensor(np.asarray(masks))
    if stack.ndim != 3 or tuple(stack.shape[1:]) != (height, width):
        raise RegionMaskError(f"region masks have shape {tuple(stack.shape)}; expected [K, {height}, {width}] "
                              "(one mask per region, at the image's height and width)")
    if not stack.flatten(1).any(1).all():
        empty = [k for k in range(len(stack)) if not stack[k].any()]
        raise RegionMaskError(f"region mask(s) {empty} are empty")
    return tv_tensors.Mask(stack.to(torch.uint8))  # the resize interpolates numbers, not bools


def _kept_area(box_xyxy: Optional[BoxesLike], masks: Optional[tv_tensors.Mask]) -> Optional[list[float]]:
    """The smallest box holding every box and every mask's pixels: what a random crop must keep whole."""
    parts = [] if box_xyxy is None else [np.asarray(box_xyxy, dtype=np.float64).reshape(-1, 4)]
    if masks is not None:
        rows = torch.nonzero(masks.as_subclass(torch.Tensor).any(2).any(0)).squeeze(1)
        cols = torch.nonzero(masks.as_subclass(torch.Tensor).any(1).any(0)).squeeze(1)
        parts.append(np.array([[int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]], dtype=np.float64))
    if not parts:
        return None
    stacked = np.concatenate(parts)
    return [float(stacked[:, 0].min()), float(stacked[:, 1].min()), float(stacked[:, 2].max()),
            float(stacked[:, 3].max())]

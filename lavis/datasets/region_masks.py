"""Region shapes as data: COCO masks (RLE, compressed or not; polygons) decoded to bool arrays, and the conversions
between a region's shape and its box, in 2D (pixels) and 3D (points).

Pixel convention: mask pixel (row r, column c) covers [c, c + 1) x [r, r + 1), so a mask's box is in the same pixel
edge coordinates as a COCO box, and `mask_box(box_mask(box)) == box` for a box on whole pixels.

Every problem raises `RegionShapeError` (a ValueError) saying what is wrong with the data; a dataset turns it into
a BadSampleError naming the sample and the region.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from pycocotools import mask as coco_mask


class RegionShapeError(ValueError):
    """A mask, polygon or point set that cannot be a region: malformed, the wrong size, or empty."""


def _rle_size(rle: dict) -> tuple[int, int]:
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise RegionShapeError(f"RLE 'size' must be [height, width] (two positive integers), not {size!r}")
    return int(size[0]), int(size[1])


def decode_rle(rle: Any) -> np.ndarray:
    """A COCO RLE `{"size": [h, w], "counts": ...}` -> bool [h, w]. `counts` is a string (compressed, as
    pycocotools writes it) or a list of run lengths (uncompressed, column-major, starting with a run of 0s)."""
    if not isinstance(rle, dict) or "counts" not in rle:
        raise RegionShapeError(f"a mask must be a COCO RLE {{'size': [h, w], 'counts': ...}}, not {_short(rle)}")
    height, width = _rle_size(rle)
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts):
            raise RegionShapeError("uncompressed RLE 'counts' must be non-negative integers")
        if sum(counts) != height * width:  # pycocotools would read past the runs or leave pixels undefined
            raise RegionShapeError(f"uncompressed RLE 'counts' sum to {sum(counts)}, but size {height}x{width} "
                                   f"has {height * width} pixels")
        encoded = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, (str, bytes)):
        encoded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise RegionShapeError(f"RLE 'counts' must be a string or a list of integers, not {type(counts).__name__}")
    try:
        return coco_mask.decode(encoded).astype(bool)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise RegionShapeError(f"cannot decode the RLE: {e}") from None


def check_polygons(polygons: Any) -> list[list[float]]:
    """COCO polygons `[[x1, y1, x2, y2, ...], ...]` (pixels) checked: each ring has >= 3 finite points."""
    if not isinstance(polygons, list) or not polygons:
        raise RegionShapeError(f"a polygon region must be a non-empty list of [x1, y1, x2, y2, ...] rings, "
                               f"not {_short(polygons)}")
    rings = []
    for k, ring in enumerate(polygons):
        if not isinstance(ring, list) or not all(isinstance(v, (int, float)) for v in ring):
            raise RegionShapeError(f"polygon ring {k} is not a list of numbers: {_short(ring)}")
        # pycocotools reads a 4-number ring as a box, so a ring needs 3 points to be a polygon
        if len(ring) % 2 or len(ring) < 6:
            raise RegionShapeError(f"polygon ring {k} has {len(ring)} numbers; it needs x, y pairs of >= 3 points")
        if not all(math.isfinite(v) for v in ring):
            raise RegionShapeError(f"polygon ring {k} has non-finite coordinates")
        rings.append([float(v) for v in ring])
    return rings


def decode_polygons(polygons: Any, height: int, width: int) -> np.ndarray:
    """COCO polygons (pixels; several rings are one region, their union) -> bool [height, width]."""
    rings = check_polygons(polygons)
    encoded = coco_mask.frPyObjects(rings, height, width)
    return coco_mask.decode(coco_mask.merge(encoded)).astype(bool)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` field (polygons, or an RLE dict) -> bool [height, width]; an RLE of another size is
    refused (its pixels would not be this image's)."""
    if isinstance(segmentation, list):
        return decode_polygons(segmentation, height, width)
    return check_mask_size(decode_rle(segmentation), height, width)


def check_mask_size(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """`mask`, or RegionShapeError when it is not the image's height x width (its pixels would not be the image's)."""
    if mask.shape != (height, width):
        raise RegionShapeError(f"the mask is {mask.shape[0]}x{mask.shape[1]} (h x w) but the image is "
                               f"{height}x{width}")
    return mask


def mask_box(mask: np.ndarray) -> Optional[list[float]]:
    """The (x1, y1, x2, y2) pixel-edge box of a mask's pixels, or None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def box_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """The rectangle mask of a box: every pixel the box touches (never empty for a box of positive area inside)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    mask = np.zeros((height, width), dtype=bool)
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    mask[top:bottom, left:right] = True
    return mask


def points_in_box(xyz: np.ndarray, center: Sequence[float], size: Sequence[float]) -> np.ndarray:
    """bool [N]: which points lie in the axis-aligned box (centre, full size), faces included."""
    half = np.asarray(size, dtype=np.float64) / 2
    offset = np.abs(np.asarray(xyz, dtype=np.float64)[:, :3] - np.asarray(center, dtype=np.float64))
    return (offset <= half).all(1)


def point_set_box(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre [3], size [3]) of the axis-aligned box of a non-empty point set [M, >=3]."""
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    if len(xyz) == 0:
        raise RegionShapeError("the point set is empty")
    if not np.isfinite(xyz).all():
        raise RegionShapeError("the point set has non-finite coordinates")
    low, high = xyz.min(0), xyz.max(0)
    return ((low + high) / 2).astype(np.float32), (high - low).astype(np.float32)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

"""Region kinds: the layout of a region's `region_geometry` vector (normalised coordinates), its length, for 3D
corner kinds how a dataset turns a box's (centre, size) into corners, and whether the region also has a mask (a
region of any shape: items carry `region_mask`, over the processed image's pixels or the processed cloud's points).
The model's PaFE reads the length (lavis/models/regionblip/region.py); the encoder turns a mask into the tokens the
region's queries may attend to. A new kind is one `register_region_kind` call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor

from lavis.common.registry import REGION_KINDS, RegistryError
from lavis.processors.point_processors import box_corners, reference_box_corners

CornerLayout = Callable[..., Tensor]  # (centre [..., 3], size [..., 3]) -> corners [..., 8, 3]


@dataclass(frozen=True)
class RegionKind:
    dim: int  # length of the geometry vector
    description: str
    box_corners: Optional[CornerLayout] = None  # 3D corner kinds: how a dataset turns (centre, size) into corners
    has_mask: bool = False  # items carry `region_mask`; the geometry is the mask's bounding box


def register_region_kind(name: str, dim: int, description: str,
                         box_corners: Optional[CornerLayout] = None, has_mask: bool = False) -> RegionKind:
    if dim <= 0:
        raise ValueError(f"region kind '{name}': dim must be positive, got {dim}")
    return REGION_KINDS.register(name)(RegionKind(dim, description, box_corners, has_mask))


register_region_kind("box2d", 4, "image box (x1, y1, x2, y2), each divided by the image width or height")
register_region_kind("box3d_corners", 24, "the 8 corners (x, y, z) of a 3D box, in the point-cloud frame",
                     box_corners)
# The reference's corners (y and z sizes swapped, its own order): what its checkpoints were trained on.
register_region_kind("box3d_corners_reference", 24, "the reference's 8 corners of a 3D box (y, z sizes swapped)",
                     reference_box_corners)
# Regions of any shape: the box kinds' geometry (of the mask's bounding box, for PaFE) plus the mask itself
register_region_kind("mask2d", 4, "image mask; geometry: its bounding box as box2d", has_mask=True)
register_region_kind("point_set", 24, "a set of the cloud's points (e.g. a ScanNet instance); geometry: the 8 "
                     "corners of its axis-aligned bounding box, as box3d_corners", box_corners, has_mask=True)


def region_dim(kind: str) -> int:
    return REGION_KINDS.get(kind).dim


def has_mask(kind: str | None) -> bool:
    return kind is not None and REGION_KINDS.get(kind).has_mask


def corner_layout(kind: str) -> CornerLayout:
    """The (centre, size) -> corners function of a 3D corner kind; ValueError for a kind without one."""
    try:
        layout = REGION_KINDS.get(kind).box_corners
    except RegistryError as e:  # a ValueError, as for a kind without a layout: both are a bad setting
        raise ValueError(str(e)) from None
    if layout is None:
        with_layout = [name for name in REGION_KINDS.names() if REGION_KINDS.get(name).box_corners is not None]
        raise ValueError(f"region kind '{kind}' has no 3D box corner layout; kinds that have one: {with_layout}")
    return layout

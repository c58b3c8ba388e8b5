"""Region kinds: the layout of a region's `region_geometry` vector (normalised coordinates), its length, and for 3D
corner kinds how a dataset turns a box's (centre, size) into corners. The model's PaFE reads the length
(lavis/models/regionblip/region.py); a new kind is one `register_region_kind` call."""

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


def register_region_kind(name: str, dim: int, description: str,
                         box_corners: Optional[CornerLayout] = None) -> RegionKind:
    if dim <= 0:
        raise ValueError(f"region kind '{name}': dim must be positive, got {dim}")
    return REGION_KINDS.register(name)(RegionKind(dim, description, box_corners))


register_region_kind("box2d", 4, "image box (x1, y1, x2, y2), each divided by the image width or height")
register_region_kind("box3d_corners", 24, "the 8 corners (x, y, z) of a 3D box, in the point-cloud frame",
                     box_corners)
# The reference's corners (y and z sizes swapped, its own order): what its checkpoints were trained on.
register_region_kind("box3d_corners_reference", 24, "the reference's 8 corners of a 3D box (y, z sizes swapped)",
                     reference_box_corners)


def region_dim(kind: str) -> int:
    return REGION_KINDS.get(kind).dim


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

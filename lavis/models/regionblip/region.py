"""Region kinds and PaFE, the position-assisted feature extraction of the paper (section 3.1).

A region kind names the layout of `region_geometry` (normalised coordinates) and its length. PaFE turns that vector
into a position embedding added to every learnable query, so the shared Q-Former extracts the region's features.
A new kind (masks as polygons, spheres, time spans, ...) is one `register_region_kind` call; no model code changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor, nn

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


class PaFE(nn.Module):
    """geometry [B, D] -> position embedding [B, 1, H]: Linear(D, hidden) -> GELU -> Linear(hidden, H)."""

    def __init__(self, geometry_dim: int, hidden: int, query_width: int):
        super().__init__()
        self.geometry_dim = geometry_dim
        self.mlp = nn.Sequential(nn.Linear(geometry_dim, hidden), nn.GELU(), nn.Linear(hidden, query_width))

    def forward(self, geometry: Tensor) -> Tensor:
        geometry = geometry.flatten(1)  # 3D corners may arrive as [B, 8, 3]
        if geometry.shape[1] != self.geometry_dim:
            raise ValueError(
                f"region_geometry has {geometry.shape[1]} values per sample; PaFE expects {self.geometry_dim}"
            )
        return self.mlp(geometry).unsqueeze(1)

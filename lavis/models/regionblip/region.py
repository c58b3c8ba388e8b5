"""Region kinds and PaFE, the position-assisted feature extraction of the paper (section 3.1).

A region kind names the layout of `region_geometry` (normalised coordinates) and its length. PaFE turns that vector
into a position embedding added to every learnable query, so the shared Q-Former extracts the region's features.
A new kind (masks as polygons, spheres, time spans, ...) is one `register_region_kind` call; no model code changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lavis.common.registry import REGION_KINDS


@dataclass(frozen=True)
class RegionKind:
    dim: int  # length of the geometry vector
    description: str


def register_region_kind(name: str, dim: int, description: str) -> RegionKind:
    if dim <= 0:
        raise ValueError(f"region kind '{name}': dim must be positive, got {dim}")
    return REGION_KINDS.register(name)(RegionKind(dim, description))


register_region_kind("box2d", 4, "image box (x1, y1, x2, y2), each divided by the image width or height")
register_region_kind("box3d_corners", 24, "the 8 corners (x, y, z) of a 3D box, in the normalised point-cloud frame")


def region_dim(kind: str) -> int:
    return REGION_KINDS.get(kind).dim


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

"""PaFE, the position-assisted feature extraction of the paper (section 3.1), and the region kinds it reads.

A region kind (lavis/processors/region_kinds.py, re-exported here) names the layout of `region_geometry` and its
length. PaFE turns that vector into a position embedding added to every learnable query, so the shared Q-Former
extracts the region's features. A new kind is one `register_region_kind` call; no model code changes.
"""

from __future__ import annotations

from torch import Tensor, nn

# the kinds live with the data processing that builds their geometry (datasets import them without the model)
from lavis.processors.region_kinds import (  # noqa: F401  (re-exported)
    CornerLayout,
    RegionKind,
    corner_layout,
    region_dim,
    register_region_kind,
)


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

"""Point clouds and 3D boxes, from a file's array to model input: sample/pad, normalise, augment.

The geometry of a region travels with its points: the box's 8 corners go through exactly the same centring,
scaling and rotation as the cloud, so after any augmentation they still enclose the object's points. Randomness
comes only from torch's global RNG, which the loader seeds per sample (reproducible, resumable augmentation).

Corner order of `box_corners` (signs of the half-size added to the centre, z is up):
    0 (-,-,-)  1 (+,-,-)  2 (+,+,-)  3 (-,+,-)     bottom face, counter-clockwise seen from above
    4 (-,-,+)  5 (+,-,+)  6 (+,+,+)  7 (-,+,+)     top face, same order
`reference_box_corners` is the reference's layout, kept by name (region kind `box3d_corners_reference`).

FPS (lavis/models/pointbert/sampling.py) starts at row 0; `fps_start: random` rolls the rows so that row 0 is a
uniformly drawn point, the reference's random start (`torch.randint(0, N, (B,))`) moved into the data, whatever
the sampling (`sampling: random` alone already puts a random point first; `stride` keeps the file's first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, overload

import numpy as np
import torch

from lavis.common.registry import PROCESSORS

CORNER_SIGNS = torch.tensor(
    [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]],
    dtype=torch.float32,
)


# The reference's order (scannet_reference_datasets.py:158-175), signs of (x, y, z).
REFERENCE_CORNER_SIGNS = torch.tensor(
    [[1, 1, 1], [1, 1, -1], [-1, 1, -1], [-1, 1, 1], [1, -1, 1], [1, -1, -1], [-1, -1, -1], [-1, -1, 1]],
    dtype=torch.float32,
)
FPS_STARTS = ("first", "random")


class PointCloudError(ValueError):
    """The array cannot be a point cloud (shape, NaN, too few channels); datasets turn it into a BadSampleError."""


class RegionMaskError(PointCloudError):
    """Point masks that do not fit the cloud, or one that is (or the sampling leaves) empty: a bad sample."""


def _checked_masks(masks, num_points: int) -> torch.Tensor:
    stack = torch.as_tensor(np.asarray(masks)).bool()
    if stack.ndim != 2 or stack.shape[1] != num_points:
        raise RegionMaskError(f"point masks have shape {tuple(stack.shape)}; expected [K, {num_points}] (one row "
                              "per region, one column per point of the cloud)")
    empty = [k for k in range(len(stack)) if not stack[k].any()]
    if empty:
        raise RegionMaskError(f"point mask(s) {empty} select no point")
    return stack


def box_corners(center, size) -> torch.Tensor:
    """Axis-aligned box(es) (centre [..., 3], full size [..., 3]) -> corners [..., 8, 3] in the order above."""
    center = torch.as_tensor(center, dtype=torch.float32)
    size = torch.as_tensor(size, dtype=torch.float32)
    return center.unsqueeze(-2) + CORNER_SIGNS * (size.unsqueeze(-2) / 2)


def reference_box_corners(center, size) -> torch.Tensor:
    """The reference's corners [..., 8, 3] of (centre, size (l, w, h)): x = c_x +- l/2, y = c_y +- h/2, z = c_z +- w/2.

    The y and z sizes are swapped (a bug of the reference); kept so that its checkpoints see the geometry they
    were trained on. Order: REFERENCE_CORNER_SIGNS.
    """
    center = torch.as_tensor(center, dtype=torch.float32)
    size = torch.as_tensor(size, dtype=torch.float32)
    half = size[..., [0, 2, 1]].unsqueeze(-2) / 2
    return center.unsqueeze(-2) + REFERENCE_CORNER_SIGNS * half


def roll_to_start(points: torch.Tensor, start_index: int) -> torch.Tensor:
    """The rows rolled so that row `start_index` comes first: FPS, which starts at row 0, then starts there."""
    return torch.roll(points, -int(start_index), dims=0)


def corners_to_geometry(corners: torch.Tensor) -> torch.Tensor:
    """[8, 3] corners -> the flat [24] `region_geometry` vector (corner-major: x0 y0 z0 x1 ...)."""
    return corners.reshape(-1)


def rotation_z(angle: float | torch.Tensor) -> torch.Tensor:
    """[3, 3] rotation by `angle` radians about the up (z) axis, counter-clockwise seen from above."""
    c, s = math.cos(float(angle)), math.sin(float(angle))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class PointCloudProcessorConfig:
    num_points: int = 8192
    sampling: str = "random"  # "random": random subset / random repeats; "stride": evenly spaced, deterministic
    use_color: bool = False  # keep rgb (channels 3:6, scaled to [0, 1]) after xyz
    normalize: bool = True  # centre on the mean and scale so the farthest point is at distance 1
    dropout_max_ratio: float = 0.0  # drop a uniform(0, max) fraction of points before sampling
    scale_low: float = 1.0  # scale factor drawn from uniform(low, high) ...
    scale_high: float = 1.0
    anisotropic: bool = True  # ... per axis (True) or one factor for all axes (False)
    rotate_z_max_deg: float = 0.0  # rotation about z drawn from uniform(-max, max); 180 = any rotation
    fps_start: str = "first"  # "random": rows rolled so FPS starts at a random point (the reference's start)

    def random_settings(self) -> list[str]:
        """The enabled random choices as 'field=value (off: neutral)'; empty: the output is deterministic."""
        found = []
        if self.sampling == "random":
            found.append("sampling=random (off: stride)")
        if self.dropout_max_ratio > 0:
            found.append(f"dropout_max_ratio={self.dropout_max_ratio} (off: 0)")
        if self.scale_low != 1.0 or self.scale_high != 1.0:
            found.append(f"scale_low/scale_high={self.scale_low}/{self.scale_high} (off: 1.0)")
        if self.rotate_z_max_deg > 0:
            found.append(f"rotate_z_max_deg={self.rotate_z_max_deg} (off: 0)")
        if self.fps_start == "random":
            found.append("fps_start=random (off: first)")
        return found


@PROCESSORS.register("point_cloud")
class PointCloudProcessor:
    """(array [N, C>=3], optional box corners [K, 8, 3], optional point masks [K, N]) -> (points [num_points, 3 or 6],
    corners [K, 8, 3]) and, with masks, the masks over the output points [K, num_points]."""

    Config = PointCloudProcessorConfig

    def __init__(self, cfg: PointCloudProcessorConfig):
        if cfg.sampling not in ("random", "stride"):
            raise ValueError(f"point_cloud processor: sampling must be 'random' or 'stride', not '{cfg.sampling}'")
        if cfg.fps_start not in FPS_STARTS:
            raise ValueError(f"point_cloud processor: fps_start must be one of {FPS_STARTS}, not '{cfg.fps_start}'")
        if not 0.0 <= cfg.dropout_max_ratio < 1.0:
            raise ValueError(f"point_cloud processor: dropout_max_ratio must be in [0, 1), got {cfg.dropout_max_ratio}")
        if not 0.0 < cfg.scale_low <= cfg.scale_high:
            raise ValueError(f"point_cloud processor: need 0 < scale_low <= scale_high, got {cfg.scale_low}, "
                             f"{cfg.scale_high}")
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: PointCloudProcessorConfig) -> PointCloudProcessor:
        return cls(cfg)

    @property
    def channels(self) -> int:
        return 6 if self.cfg.use_color else 3

    @overload
    def __call__(self, array, corners: Optional[torch.Tensor] = None,
                 masks: None = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...

    @overload
    def __call__(self, array, corners: Optional[torch.Tensor],
                 masks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]: ...

    def __call__(self, array, corners=None, masks=None):
        """(points, corners) and, when `masks` (bool [K, N] over the array's rows) is given, the masks [K, num_points]:
        row i of a mask belongs to point i of the output (same dropout, sampling and roll). A mask that the dropout
        or sampling empties raises RegionMaskError."""
        points = self._validated(array)
        if masks is not None:
            masks = _checked_masks(masks, len(points))
        rows = self._dropout_rows(len(points))
        rows = rows[self.sample_indices(len(rows))]
        points = points[rows]
        xyz, rest = points[:, :3], points[:, 3:]
        corners = None if corners is None else torch.as_tensor(corners, dtype=torch.float32).clone()
        if self.cfg.normalize:
            center, radius = normalization_of(xyz)
            xyz = (xyz - center) / radius
            corners = None if corners is None else (corners - center) / radius
        linear = self._random_linear()
        if linear is not None:
            xyz = xyz @ linear.T
            corners = None if corners is None else corners @ linear.T
        points = torch.cat([xyz, rest], 1)
        if self.cfg.fps_start == "random":  # last, so the draw leaves the other draws as they were
            start = int(torch.randint(0, len(points), ()))
            points, rows = roll_to_start(points, start), roll_to_start(rows, start)
        if masks is None:
            return points.contiguous(), corners
        kept = masks[:, rows]
        emptied = [k for k in range(len(kept)) if not kept[k].any()]
        if emptied:
            raise RegionMaskError(f"region(s) {emptied} have no point left after dropout / sampling "
                                  f"({self.cfg.num_points} points drawn from {masks.shape[1]})")
        return points.contiguous(), corners, kept

    def _validated(self, array) -> torch.Tensor:
        points = torch.as_tensor(np.asarray(array), dtype=torch.float32)
        if points.ndim != 2 or points.shape[1] < 3:
            raise PointCloudError(f"expected an [N, >=3] array, got shape {tuple(points.shape)}")
        if len(points) == 0:
            raise PointCloudError("the point cloud is empty")
        if self.cfg.use_color and points.shape[1] < 6:
            raise PointCloudError(f"use_color is set but the cloud has {points.shape[1]} channels (need xyz rgb)")
        if not torch.isfinite(points[:, : self.channels]).all():
            raise PointCloudError("the point cloud has NaN or infinite values")
        if not self.cfg.use_color:
            return points[:, :3]
        rgb = points[:, 3:6]
        if rgb.max() > 1.0:  # stored as 0-255 (ScanNet, most .ply files)
            rgb = rgb / 255.0
        return torch.cat([points[:, :3], rgb.clamp(0.0, 1.0)], 1)

    def _dropout_rows(self, n: int) -> torch.Tensor:
        """The rows kept by the dropout (all of them when it is off; at least one)."""
        if self.cfg.dropout_max_ratio <= 0:
            return torch.arange(n)
        ratio = float(torch.rand(())) * self.cfg.dropout_max_ratio
        keep = torch.rand(n) >= ratio
        return torch.nonzero(keep).squeeze(1) if keep.any() else torch.zeros(1, dtype=torch.long)

    def sample_indices(self, n: int) -> torch.Tensor:
        """Indices giving exactly num_points rows: a subset when n is larger, every row plus repeats otherwise."""
        want = self.cfg.num_points
        if self.cfg.sampling == "stride":
            return torch.arange(want) * n // want if n >= want else torch.arange(want) % n
        if n >= want:
            return torch.randperm(n)[:want]
        return torch.cat([torch.randperm(n), torch.randint(0, n, (want - n,))])

    def _random_linear(self) -> Optional[torch.Tensor]:
        """The augmentation as one 3x3 matrix (rotation @ scale), or None when augmentation is off."""
        cfg = self.cfg
        matrix = None
        if cfg.scale_low != 1.0 or cfg.scale_high != 1.0:
            draws = torch.rand(3 if cfg.anisotropic else 1) * (cfg.scale_high - cfg.scale_low) + cfg.scale_low
            matrix = torch.diag(draws.expand(3))
        if cfg.rotate_z_max_deg > 0:
            angle = (float(torch.rand(())) * 2 - 1) * math.radians(cfg.rotate_z_max_deg)
            rot = rotation_z(angle)
            matrix = rot if matrix is None else rot @ matrix
        return matrix


def normalization_of(xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (mean) and radius (farthest distance from it) that map the cloud into the unit sphere."""
    center = xyz.mean(0)
    radius = (xyz - center).norm(dim=1).max()
    return center, radius.clamp_min(1e-8)

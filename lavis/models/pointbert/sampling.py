"""Point grouping in plain torch: farthest-point sampling of centres and k-nearest-neighbour groups.

Replaces the CUDA extensions (`pointnet2_ops.furthest_point_sample`, `knn_cuda`) of the reference code.
Distances are always computed in fp32 with autocast off, so neighbour choice does not depend on the AMP dtype.
"""

from __future__ import annotations

import torch


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype != torch.float64 else t


def farthest_point_sample(xyz: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Indices [B, S] of `num_samples` points of `xyz` [B, P, 3], each the farthest from those already chosen.

    Starts from point 0 of every cloud, as `pointnet2_ops.furthest_point_sample` does, so results are deterministic.
    The loop runs over samples; each step is vectorised over the batch and the points.
    """
    batch, num_points, _ = xyz.shape
    if num_samples > num_points:
        raise ValueError(f"cannot sample {num_samples} centres from {num_points} points")
    with torch.no_grad(), torch.autocast(device_type=xyz.device.type, enabled=False):
        xyz = _fp32(xyz)
        chosen = torch.empty(batch, num_samples, dtype=torch.long, device=xyz.device)
        nearest_chosen = torch.full((batch, num_points), float("inf"), dtype=xyz.dtype, device=xyz.device)
        farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
        rows = torch.arange(batch, device=xyz.device)
        for i in range(num_samples):
            chosen[:, i] = farthest
            centre = xyz[rows, farthest].unsqueeze(1)  # [B, 1, 3]
            nearest_chosen = torch.minimum(nearest_chosen, (xyz - centre).square().sum(-1))
            farthest = nearest_chosen.argmax(dim=-1)
    return chosen


def knn_indices(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, Q, k] of the `k` points of `points` [B, P, 3] nearest to each of `queries` [B, Q, 3], nearest first.

    Exact distances (no matmul expansion, so TF32 or bf16 settings cannot reorder neighbours).
    """
    if k > points.shape[1]:
        raise ValueError(f"cannot take {k} neighbours from {points.shape[1]} points")
    with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
        dist = torch.cdist(_fp32(queries), _fp32(points), compute_mode="donot_use_mm_for_euclid_dist")
        return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, P, C] gathered at index [B, ...] -> [B, ..., C] (differentiable w.r.t. `values`)."""
    rows = torch.arange(values.shape[0], device=values.device).view(-1, *([1] * (index.dim() - 1)))
    return values[rows, index]


def group_points(points: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split clouds [B, P, 3 + F] into `num_groups` neighbourhoods of `group_size` points.

    Geometry uses xyz only. Returns (groups [B, G, K, 3 + F] with xyz relative to the centre and the extra
    features such as rgb unchanged, centres [B, G, 3]).
    """
    xyz = points[..., :3]
    centres = gather_points(xyz, farthest_point_sample(xyz, num_groups))
    neighbours = gather_points(points, knn_indices(xyz, centres, group_size))  # [B, G, K, 3 + F]
    relative_xyz = neighbours[..., :3] - centres.unsqueeze(2)
    return torch.cat([relative_xyz, neighbours[..., 3:]], dim=-1), centres

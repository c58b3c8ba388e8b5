"""Point grouping in plain torch: farthest-point sampling of centres and k-nearest-neighbour groups.

Replaces the CUDA extensions (`pointnet2_ops.furthest_point_sample`, `knn_cuda`) of the reference code.
Distances are always computed in fp32 with autocast off, so neighbour choice does not depend on the AMP dtype.

Farthest-point sampling has two backends, chosen by the encoder's `fps_backend`:
  * "torch" (default): a Python loop over the S centres, each step batched (~4 kernel launches per centre on GPU);
  * "triton" (opt-in): one Triton program per cloud runs the whole loop. Up to `TRITON_FPS_MAX_POINTS` points
    it holds the points in registers; larger clouds (ScanRefer scenes: 40000 points) are swept in chunks of
    `TRITON_FPS_CHUNK` per centre, with the running nearest distances in a global workspace (L2-resident at these
    sizes). It is used for CUDA tensors of fp16 / bf16 / fp32; anything else (CPU, fp64) takes the torch path.
    Same indices as torch (start at point 0, fp32 squared distances summed as dx*dx + dy*dy + dz*dz without FMA
    contraction, ties to the lowest index), checked on CPU with Triton's interpreter; every launch configuration
    also compiles for sm_90 without register spills (ptxas, no GPU needed). The default stays "torch" until the
    kernels have been checked and timed on a GPU.
Triton is imported only when the triton backend is asked for.
"""

from __future__ import annotations

import torch

FPS_BACKENDS = ("torch", "triton")
# BLOCK (the next power of two >= points) must fit one program's registers: at 16384 ptxas spills (sm_90, any warps)
TRITON_FPS_MAX_POINTS = 8192
TRITON_FPS_CHUNK = 4096  # points per sweep step of the chunked kernel, for clouds larger than that


def triton_fps_launch(num_points: int, chunk: int | None = None) -> tuple[str, int, int]:
    """(kernel "register" or "chunked", BLOCK or CHUNK, num_warps) for a cloud of `num_points`; `chunk` forces the
    chunked kernel. The warps keep BLOCK / threads <= 16 points per thread (no spills; see the ptxas test)."""
    if chunk is None and num_points <= TRITON_FPS_MAX_POINTS:
        block = max(1 << max(num_points - 1, 0).bit_length(), 16)
        return "register", block, 32 if block >= 8192 else 8 if block >= 2048 else 4
    chunk = chunk or TRITON_FPS_CHUNK
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")
    return "chunked", chunk, 8 if chunk >= 2048 else 4


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype != torch.float64 else t


def check_fps_backend(backend: str, owner: str = "") -> None:
    """`owner` prefixes the message, e.g. "pointbert" for the encoder's config field."""
    if backend not in FPS_BACKENDS:
        raise ValueError(f"{owner + ' ' if owner else ''}fps_backend must be one of {FPS_BACKENDS}, got {backend!r}")


def farthest_point_sample(xyz: torch.Tensor, num_samples: int, backend: str = "torch") -> torch.Tensor:
    """Indices [B, S] of `num_samples` points of `xyz` [B, P, 3], each the farthest from those already chosen.

    Starts from point 0 of every cloud, as `pointnet2_ops.furthest_point_sample` does, so results are deterministic.
    `backend` "torch": the loop runs over samples, each step vectorised over the batch and the points. "triton":
    the fused kernel where it applies (see module docstring), else the torch path.
    """
    check_fps_backend(backend)
    batch, num_points, _ = xyz.shape
    if num_samples > num_points:
        raise ValueError(f"cannot sample {num_samples} centres from {num_points} points")
    if backend == "triton" and xyz.is_cuda and xyz.dtype != torch.float64 and batch > 0 and num_samples > 0:
        return farthest_point_sample_triton(xyz, num_samples)
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


def require_triton():
    """Import and return `triton`, with an error naming the setting when it is not installed."""
    try:
        import triton
    except ImportError as err:
        raise ImportError("fps_backend 'triton' needs the `triton` package (pip install triton); "
                          "or set fps_backend: torch") from err
    return triton


def _triton_fps_kernels():
    """(register kernel, chunked kernel), imported on first use so that triton is imported only for this backend."""
    require_triton()
    from lavis.models.pointbert.fps_triton import fps_chunked_kernel, fps_kernel

    return fps_kernel, fps_chunked_kernel


def farthest_point_sample_triton(xyz: torch.Tensor, num_samples: int, chunk: int | None = None) -> torch.Tensor:
    """The triton backend of `farthest_point_sample` on any device Triton can run on (CUDA, or CPU tensors under
    TRITON_INTERPRET=1); no fallback. Indices [B, S] int64, identical to the torch path for fp16/bf16/fp32 input.
    `chunk` (a power of two) forces the chunked kernel with that chunk size (tests); by default clouds of more than
    TRITON_FPS_MAX_POINTS points take it with TRITON_FPS_CHUNK."""
    batch, num_points, _ = xyz.shape
    if num_samples > num_points:
        raise ValueError(f"cannot sample {num_samples} centres from {num_points} points")
    if xyz.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"triton FPS takes fp16 / bf16 / fp32 points, got {xyz.dtype}")
    chosen = torch.empty(batch, num_samples, dtype=torch.long, device=xyz.device)
    if batch == 0 or num_samples == 0:
        return chosen
    kind, width, num_warps = triton_fps_launch(num_points, chunk)
    kernel, chunked_kernel = _triton_fps_kernels()
    strides = (xyz.stride(0), xyz.stride(1), xyz.stride(2))
    # no FMA contraction: dx*dx + dy*dy + dz*dz rounds like torch's separate square and sum
    if kind == "register":
        kernel[(batch,)](xyz, chosen, num_points, num_samples, *strides, BLOCK=width, num_warps=num_warps,
                         enable_fp_fusion=False)
        return chosen
    nearest = torch.full((batch, num_points), float("inf"), dtype=torch.float32, device=xyz.device)
    chunked_kernel[(batch,)](xyz, nearest, chosen, num_points, num_samples, *strides, CHUNK=width,
                             num_warps=num_warps, enable_fp_fusion=False)
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


def group_points(points: torch.Tensor, num_groups: int, group_size: int,
                 fps_backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Split clouds [B, P, 3 + F] into `num_groups` neighbourhoods of `group_size` points.

    Geometry uses xyz only; `fps_backend` picks the farthest-point sampling backend (see module docstring).
    Returns (groups [B, G, K, 3 + F] with xyz relative to the centre and the extra
    features such as rgb unchanged, centres [B, G, 3]).
    """
    index, centres = group_indices(points, num_groups, group_size, fps_backend)
    neighbours = gather_points(points, index)  # [B, G, K, 3 + F]
    relative_xyz = neighbours[..., :3] - centres.unsqueeze(2)
    return torch.cat([relative_xyz, neighbours[..., 3:]], dim=-1), centres


def group_indices(points: torch.Tensor, num_groups: int, group_size: int,
                  fps_backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """The point indices of each group [B, G, K] (FPS centres, then their k nearest points) and the centres
    [B, G, 3]: which input points every token of the encoder covers."""
    xyz = points[..., :3]
    centres = gather_points(xyz, farthest_point_sample(xyz, num_groups, fps_backend))
    return knn_indices(xyz, centres, group_size), centres

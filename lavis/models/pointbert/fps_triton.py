"""Triton kernels of farthest-point sampling (sampling.py's "triton" backend, which documents them and launches them).

A module of its own, imported only when that backend is used, so that plain runs never import triton; the kernels
and their helper are module-level functions because Triton's interpreter (TRITON_INTERPRET=1, the CPU tests)
resolves a kernel's calls through the module's globals.
"""

import triton
import triton.language as tl


@triton.jit
def record_centre(base, out, i, farthest, stride_p, stride_c):
    """Store centre i's index; return its coordinates in fp32."""
    tl.store(out + i, farthest.to(tl.int64))
    centre = base + farthest.to(tl.int64) * stride_p
    return (tl.load(centre).to(tl.float32), tl.load(centre + stride_c).to(tl.float32),
            tl.load(centre + 2 * stride_c).to(tl.float32))


@triton.jit
def fps_kernel(xyz_ptr, out_ptr, num_points, num_samples, stride_b, stride_p, stride_c,
               BLOCK: tl.constexpr):
    cloud = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    valid = offs < num_points
    base = xyz_ptr + cloud * stride_b
    x = tl.load(base + offs * stride_p, mask=valid, other=0.0).to(tl.float32)
    y = tl.load(base + offs * stride_p + stride_c, mask=valid, other=0.0).to(tl.float32)
    z = tl.load(base + offs * stride_p + 2 * stride_c, mask=valid, other=0.0).to(tl.float32)
    # padding lanes hold -1 so they never win the argmax (real distances are >= 0)
    nearest = tl.where(valid, float("inf"), -1.0)
    out = out_ptr + cloud * num_samples
    farthest = tl.program_id(0) * 0  # int32 scalar 0: start at point 0
    for i in range(num_samples):
        cx, cy, cz = record_centre(base, out, i, farthest, stride_p, stride_c)
        dx = x - cx
        dy = y - cy
        dz = z - cz
        nearest = tl.minimum(nearest, dx * dx + dy * dy + dz * dz)
        farthest = tl.argmax(nearest, axis=0, tie_break_left=True)


@triton.jit
def fps_chunked_kernel(xyz_ptr, nearest_ptr, out_ptr, num_points, num_samples, stride_b, stride_p, stride_c,
                       CHUNK: tl.constexpr):
    cloud = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, CHUNK)
    base = xyz_ptr + cloud * stride_b
    nearest_row = nearest_ptr + cloud * num_points  # [B, N] fp32, +inf on entry
    out = out_ptr + cloud * num_samples
    farthest = tl.program_id(0) * 0  # int32 scalar 0: start at point 0
    for i in range(num_samples):
        cx, cy, cz = record_centre(base, out, i, farthest, stride_p, stride_c)
        best = cx * 0.0 - 1.0  # fp32 scalar -1: below every distance
        best_index = farthest * 0
        for start in range(0, num_points, CHUNK):
            offs = start + lanes
            valid = offs < num_points
            point = base + offs.to(tl.int64) * stride_p
            dx = tl.load(point, mask=valid, other=0.0).to(tl.float32) - cx
            dy = tl.load(point + stride_c, mask=valid, other=0.0).to(tl.float32) - cy
            dz = tl.load(point + 2 * stride_c, mask=valid, other=0.0).to(tl.float32) - cz
            near = tl.minimum(tl.load(nearest_row + offs, mask=valid, other=-1.0), dx * dx + dy * dy + dz * dz)
            tl.store(nearest_row + offs, near, mask=valid)
            near = tl.where(valid, near, -1.0)  # padding lanes never win
            chunk_best = tl.max(near, axis=0)
            chunk_index = start + tl.argmax(near, axis=0, tie_break_left=True)
            # strictly greater: on a tie the earlier chunk, i.e. the lower index, keeps it
            better = chunk_best > best
            best_index = tl.where(better, chunk_index, best_index)
            best = tl.where(better, chunk_best, best)
        tl.debug_barrier()  # this centre's workspace stores land before the next sweep loads them
        farthest = best_index

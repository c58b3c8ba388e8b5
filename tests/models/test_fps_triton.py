"""Opt-in Triton farthest-point sampling (`fps_backend: triton`) against the torch reference.

The kernel itself runs on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), in a subprocess so that the
variable never reaches this process's triton (it is read when a kernel is defined). On a CUDA machine the compiled
kernel is also checked against torch.

Limit of the interpreter: it reduces tl.argmax with np.nanargmax, which always takes the leftmost index, whatever
`tie_break_left` says (triton/runtime/interpreter.py). So the CPU test proves the algorithm and the tie cases of the
reference, but the compiled kernel's tie-breaking (tie_break_left=True: `value1 == value2 and index1 < index2`) is
checked only by the CUDA test below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lavis.models.pointbert.encoder import PointBert, PointBertConfig
from lavis.models.pointbert.sampling import farthest_point_sample, farthest_point_sample_triton, group_points

_INTERPRETER_CHECK = textwrap.dedent("""
    import os, sys
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def loop_over_a_runtime_count(out_ptr, count):
        for i in range(count):
            tl.store(out_ptr + i, i)

    try:
        loop_over_a_runtime_count[(1,)](torch.zeros(2, dtype=torch.int32), 2)
    except Exception as e:  # Triton 3.6's interpreter: int() of a 1-element array, an error under NumPy >= 2.4
        if "0-dimensional" not in repr(e):
            raise
        print(f"SKIP: this Triton ({triton.__version__}) interpreter cannot loop over a runtime count: {e!r}")
        sys.exit(0)
    from lavis.models.pointbert.sampling import (TRITON_FPS_MAX_POINTS, farthest_point_sample,
                                                 farthest_point_sample_triton)

    gen = torch.Generator().manual_seed(0)
    cases = []
    # (name, xyz [B, N, 3 or a strided view], S): random clouds, N non-powers of two, S = 1 and S = N
    # (sizes kept small: the interpreter runs each program instance in Python)
    for batch, num_points, num_samples in [(1, 1, 1), (2, 37, 37), (2, 1000, 32), (2, 129, 20), (1, 2049, 12)]:
        cases.append((f"random B{batch} N{num_points} S{num_samples}",
                      torch.randn(batch, num_points, 3, generator=gen), num_samples))
    # ties: integer lattice points, many duplicates and many equal distances (exact in fp32)
    lattice = torch.randint(0, 3, (3, 200, 3), generator=gen).float()
    cases.append(("lattice ties", lattice, 40))
    cases.append(("all points equal", torch.ones(2, 50, 3), 10))
    dup = torch.randn(2, 30, 3, generator=gen)
    cases.append(("every point twice", torch.cat([dup, dup], dim=1)[:, torch.randperm(60, generator=gen)], 45))
    # xyz as a strided view of [B, N, 6] points (what group_points passes), and half-precision input
    cases.append(("strided view of xyz+rgb", torch.randn(2, 300, 6, generator=gen)[..., :3], 32))
    cases.append(("fp16 input", torch.randn(2, 300, 3, generator=gen).half(), 32))
    cases.append(("bf16 input", torch.randn(2, 300, 3, generator=gen).bfloat16(), 32))

    ties_seen = 0
    for name, xyz, num_samples in cases:
        expected = farthest_point_sample(xyz, num_samples, backend="torch")
        # the register kernel, then the chunked one with chunks small enough that every case spans several
        # (ties across chunk boundaries included); chunk 16 is also narrower than N = 1 + padding
        for chunk in (None, 16, 64) if xyz.shape[1] <= 300 else (None, 64):  # 64 still spans several chunks
            got = farthest_point_sample_triton(xyz, num_samples, chunk=chunk)
            assert got.dtype == torch.long and got.shape == expected.shape, name
            assert torch.equal(got, expected), f"{name}, chunk {chunk}: {got.tolist()} != {expected.tolist()}"
        if name == "lattice ties":
            # the reference does meet ties: some chosen point has an equal-distance rival with a higher index
            x = xyz.float()
            for b in range(x.shape[0]):
                nearest = torch.full((x.shape[1],), float("inf"))
                for i in range(num_samples - 1):
                    nearest = torch.minimum(nearest, (x[b] - x[b, expected[b, i]]).square().sum(-1))
                    ties_seen += int((nearest == nearest.max()).sum() > 1)
    assert ties_seen > 0
    # a cloud larger than the register kernel holds takes the chunked kernel by default
    big = torch.randn(1, TRITON_FPS_MAX_POINTS + 100, 3, generator=gen)
    assert torch.equal(farthest_point_sample_triton(big, 6), farthest_point_sample(big, 6, backend="torch"))
    print("OK", len(cases), "cases", ties_seen, "tied steps")
""")


def test_triton_kernel_matches_torch_under_interpreter():
    pytest.importorskip("triton")
    before = os.environ.get("TRITON_INTERPRET")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}  # a copy: this process is untouched
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.stdout.startswith("OK"), proc.stdout
    assert os.environ.get("TRITON_INTERPRET") == before


def test_triton_backend_falls_back_to_torch_off_cuda():
    xyz = torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(farthest_point_sample(xyz, 16, backend="triton"), farthest_point_sample(xyz, 16))
    points = torch.randn(2, 100, 6, generator=torch.Generator().manual_seed(2))
    for got, want in zip(group_points(points, 8, 4, fps_backend="triton"), group_points(points, 8, 4)):
        assert torch.equal(got, want)


def test_unknown_backend_is_rejected_naming_the_key():
    with pytest.raises(ValueError, match="fps_backend"):
        farthest_point_sample(torch.zeros(1, 4, 3), 2, backend="cuda")
    with pytest.raises(ValueError, match="pointbert fps_backend"):
        PointBert(PointBertConfig(width=32, depth=1, num_heads=2, group_embed_dim=32, num_groups=4, group_size=4,
                                  fps_backend="pytorch"))


def test_pointbert_triton_backend_config_matches_torch_on_cpu():
    pytest.importorskip("triton")
    cfg = dict(width=32, depth=1, num_heads=2, group_embed_dim=32, num_groups=8, group_size=4)
    torch.manual_seed(0)
    reference = PointBert(PointBertConfig(**cfg)).eval()
    candidate = PointBert(PointBertConfig(**cfg, fps_backend="triton")).eval()
    candidate.load_state_dict(reference.state_dict())
    points = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(candidate(points), reference(points), rtol=0, atol=0)


def test_missing_triton_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "lavis.models.pointbert.fps_triton", raising=False)
    with pytest.raises(ImportError, match="fps_backend 'triton' needs the `triton` package"):
        farthest_point_sample_triton(torch.zeros(1, 4, 3), 2)
    with pytest.raises(ImportError, match="fps_backend 'triton'"):
        PointBert(PointBertConfig(width=32, depth=1, num_heads=2, group_embed_dim=32, num_groups=4, group_size=4,
                                  fps_backend="triton"))


def test_triton_launcher_rejects_what_it_cannot_take():
    with pytest.raises(ValueError, match="power of two"):
        farthest_point_sample_triton(torch.zeros(1, 40, 3), 2, chunk=24)
    with pytest.raises(TypeError, match="fp16 / bf16 / fp32"):
        farthest_point_sample_triton(torch.zeros(1, 4, 3, dtype=torch.float64), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch,num_points,num_samples",
                         [(1, 1, 1), (4, 1000, 64), (8, 8192, 512), (2, 16384, 512), (2, 16385, 64), (4, 40000, 512)])
def test_triton_kernel_matches_torch_on_cuda(batch, num_points, num_samples):
    gen = torch.Generator(device="cuda").manual_seed(0)
    xyz = torch.randn(batch, num_points, 3, device="cuda", generator=gen)
    lattice = torch.randint(0, 4, (batch, num_points, 3), device="cuda", generator=gen).float()
    for cloud in (xyz, lattice, xyz.half()):
        expected = farthest_point_sample(cloud, num_samples, backend="torch")
        torch.testing.assert_close(farthest_point_sample(cloud, num_samples, backend="triton"), expected,
                                   rtol=0, atol=0)


_PTXAS_CHECK = textwrap.dedent("""
    import os, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from lavis.models.pointbert.sampling import TRITON_FPS_CHUNK, _triton_fps_kernels, triton_fps_launch

    register_kernel, chunked_kernel = _triton_fps_kernels()
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    scalars = {"num_points": "i32", "num_samples": "i32", "stride_b": "i32", "stride_p": "i32", "stride_c": "i32"}
    # every launch the launcher makes: each register BLOCK width at its boundary sizes, and the chunked kernel
    launches = {triton_fps_launch(n) for n in (16, 17, 1024, 2048, 2049, 4096, 4097, 8192, 8193)}
    launches.add(triton_fps_launch(40000, TRITON_FPS_CHUNK))
    for kind, width, num_warps in sorted(launches):
        for dtype in ("fp32", "bf16", "fp16"):
            if kind == "register":
                signature = {"xyz_ptr": f"*{dtype}", "out_ptr": "*i64", **scalars, "BLOCK": "constexpr"}
                src = ASTSource(register_kernel, signature=signature, constexprs={"BLOCK": width})
            else:
                signature = {"xyz_ptr": f"*{dtype}", "nearest_ptr": "*fp32", "out_ptr": "*i64", **scalars,
                             "CHUNK": "constexpr"}
                src = ASTSource(chunked_kernel, signature=signature, constexprs={"CHUNK": width})
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": num_warps, "enable_fp_fusion": False})
            with tempfile.TemporaryDirectory() as tmp:
                ptx = os.path.join(tmp, "fps.ptx")
                with open(ptx, "w") as f:
                    f.write(compiled.asm["ptx"])
                out = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", ptx + ".cubin"], capture_output=True,
                                     text=True)
            assert out.returncode == 0, out.stderr
            report = " ".join(line.split("info    :")[-1].strip() for line in out.stderr.splitlines())
            assert "0 bytes spill stores" in report, f"{kind} {width} {num_warps} warps {dtype}: {report}"
            print(kind, width, num_warps, dtype, "no spills")
    print("OK")
""")


def test_every_triton_launch_compiles_for_hopper_without_spills():
    """The compiled kernels, not the interpreter's: Triton lowers each launch configuration to PTX for sm_90 and
    ptxas (shipped with Triton) assembles it, here without a GPU; a register spill would put the points of the
    register kernel in local memory, every centre of the loop."""
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("this Triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _PTXAS_CHECK], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout

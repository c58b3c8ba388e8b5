"""Record every read of a tensor's values by the host, and every op whose output size depends on tensor values.

On a GPU each of these makes the host wait for all queued work (a device sync); on the CPU they cost nothing, so
a CPU test finds them by watching for them. Two levels are watched: Python-level reads (`item`, `tolist`, `bool`,
`int`, `float`, `cpu`, `numpy`), seen by a TorchFunctionMode, and the ATen ops behind the others (the scalar read
under `if tensor:` in library code, boolean-mask indexing and assignment, nonzero, unique, ...), seen by a
TorchDispatchMode. Not visible on the CPU, where every tensor already is on the host: copies to the host by other
means (`.to("cpu")`, `copy_`); the CUDA variant of the tests (torch.cuda.set_sync_debug_mode) covers those.
"""

from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

PYTHON_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
                torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}
VALUE_SIZED_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                   aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default, aten.equal.default,
                   aten.is_nonzero.default}


# Reads of tensors that live on the host whatever the run's device, by the source line that makes them (on the CPU
# every tensor is a host tensor, so the watch cannot tell them apart by device)
HOST_TENSOR_READS = (
    "dropout_probability < self.layerdrop",  # transformers < 5.2x OPT: LayerDrop's coin is torch.rand([]) on the CPU
)


def _where() -> str | None:
    """The innermost frames outside this file and torch's own dispatch machinery; None for a known host-tensor read."""
    frames = [f for f in traceback.extract_stack()[:-2] if f.filename != __file__ and "/torch/" not in f.filename]
    if frames and any(pattern in (frames[-1].line or "") for pattern in HOST_TENSOR_READS):
        return None
    return " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))


def _syncs(func, args, kwargs) -> bool:
    if func in VALUE_SIZED_OPS:
        return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        # x[mask] and x[mask] = v: the mask becomes indices, as many as it has True values
        return any(i is not None and i.dtype == torch.bool for i in args[1])
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    return False


class _PythonReads(TorchFunctionMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in PYTHON_READS and (where := _where()) is not None:
            self.found.append(f"{getattr(func, '__name__', func)} at {where}")
        return func(*args, **(kwargs or {}))


class _OpReads(TorchDispatchMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs) and (where := _where()) is not None:
            self.found.append(f"{func} at {where}")
        return func(*args, **kwargs)


class HostReads:
    """`with HostReads() as reads: ...` then `reads.found` lists each read with where it happened."""

    def __init__(self):
        self.found: list[str] = []
        self._modes = (_PythonReads(self.found), _OpReads(self.found))

    def __enter__(self) -> HostReads:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def report(self) -> str:
        return "\n".join(self.found[:20])

"""Read pickled data files (RefCOCO `refs(*).p`, ModelNet40 `.dat`) without letting them run code.

Only plain containers, numbers, strings and numpy arrays are admitted; any other global in the stream is refused.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "bool"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("collections", "OrderedDict"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, on purpose: the C one sizes its memo table from the indices in the stream, so one
    damaged byte (a huge LONG_BINPUT index) makes it allocate and zero gigabytes and the kernel kills the process;
    here the memo is a dict, and every length field is bounded by the bytes actually present (see `_load`)."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")  # Python-2 pickles (RefCOCO) need latin1 for numpy buffers
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to load '{module}.{name}'; data files may only hold plain containers, "
            "numbers, strings and numpy arrays"
        )


def _load(file, source: str) -> Any:
    """Unpickle with the restricted unpickler; whatever a damaged stream makes the unpickler raise (a truncated
    struct field, a memo miss, a stack underflow, a corrupt buffer) becomes an UnpicklingError naming `source`."""
    try:
        return _RestrictedUnpickler(file, source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside the unpickler means the stream is damaged
        raise pickle.UnpicklingError(f"{source}: damaged pickle stream ({type(e).__name__}: {e})") from None


def load_pickle(path: str | Path) -> Any:
    path = Path(path)
    # read from memory: a length field larger than the file then reads what is there (and fails as truncated)
    # instead of asking the file object for a buffer of that size
    return _load(io.BytesIO(path.read_bytes()), str(path))


def loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    return _load(io.BytesIO(data), source)

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


class _RestrictedUnpickler(pickle.Unpickler):
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


# A damaged stream can make the unpickler itself fail: a corrupt length field asks for a huge buffer (MemoryError),
# a corrupt opcode sequence trips CPython's buffer checks (SystemError) or nests without end (RecursionError).
_DAMAGED_STREAM_ERRORS = (MemoryError, SystemError, OverflowError, RecursionError)


def _load(file, source: str) -> Any:
    try:
        return _RestrictedUnpickler(file, source).load()
    except _DAMAGED_STREAM_ERRORS as e:
        raise pickle.UnpicklingError(f"{source}: damaged pickle stream ({type(e).__name__}: {e})") from None


def load_pickle(path: str | Path) -> Any:
    path = Path(path)
    with path.open("rb") as f:
        return _load(f, str(path))


def loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    return _load(io.BytesIO(data), source)

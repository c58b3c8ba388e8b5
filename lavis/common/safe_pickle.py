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


def load_pickle(path: str | Path) -> Any:
    path = Path(path)
    with path.open("rb") as f:
        return _RestrictedUnpickler(f, str(path)).load()


def loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    return _RestrictedUnpickler(io.BytesIO(data), source).load()

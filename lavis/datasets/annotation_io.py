"""Reading annotation files so that a damaged one fails with its path and what is wrong with it, not with a
bare JSONDecodeError / UnicodeDecodeError / KeyError from deep inside a parser."""

from __future__ import annotations

import io
import json
import pickle
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lavis.common.safe_pickle import UnsafePickleError


class AnnotationError(ValueError):
    pass


# What a truncated, garbage or wrongly-shaped file raises while it is decoded or walked.
_PARSE_ERRORS = (UnicodeDecodeError, json.JSONDecodeError, pickle.UnpicklingError, EOFError, KeyError, TypeError,
                 AttributeError, IndexError, ValueError)


@contextmanager
def parsing(path: str | Path, expected: str) -> Iterator[None]:
    """Re-raise any decoding or structure error inside the block as an AnnotationError naming `path`."""
    try:
        yield
    except (AnnotationError, UnsafePickleError):  # already say what and where
        raise
    except _PARSE_ERRORS as e:
        raise AnnotationError(f"{path}: cannot be read as {expected}: {type(e).__name__}: {e}") from e


def read_json(path: str | Path, expected: str = "JSON") -> Any:
    with parsing(path, expected):
        return json.loads(Path(path).read_text(encoding="utf-8"))


def read_lines(path: str | Path, expected: str = "UTF-8 text") -> list[str]:
    """Non-empty stripped lines."""
    with parsing(path, expected):
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# What numpy raises on a damaged .npy / .npz: besides I/O and format errors, a damaged header is parsed as a Python
# literal (SyntaxError, tokenize.TokenError), a damaged shape can ask for a huge buffer (MemoryError), and a damaged
# .npz (a zip) can name an unknown compression method (NotImplementedError), encryption (RuntimeError) or hold a
# broken deflate stream (zlib.error).
_ARRAY_ERRORS = (OSError, EOFError, ValueError, KeyError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile,
                 MemoryError, NotImplementedError, RuntimeError, zlib.error)


def load_array(source: str | Path | bytes, name: str = "") -> np.ndarray:
    """An .npy (path or bytes) or .npz (path; key `arr_0`, else its only array) of numbers (bool, int or float) as an
    array, never a pickled object. Raises ValueError naming `name` (default: the path) when the file cannot be read
    as such an array (strings and records included: every caller reads points, boxes or offsets)."""
    name = name or str(source)
    try:
        array = _read_array(source)
    except _ARRAY_ERRORS as e:
        raise ValueError(f"cannot read {name} as an array: {type(e).__name__}: {e}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} holds {array.dtype} values, not numbers: save the array as float32 (e.g. "
                         "np.save(path, points.astype(np.float32)))")
    return array


def _read_array(source: str | Path | bytes) -> np.ndarray:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return np.load(io.BytesIO(source), allow_pickle=False)
    path = Path(source)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            key = "arr_0" if "arr_0" in data.files else (data.files[0] if len(data.files) == 1 else None)
            if key is None:
                raise ValueError(f"no 'arr_0' among its arrays {data.files}")
            return data[key]
    return np.load(path, allow_pickle=False)

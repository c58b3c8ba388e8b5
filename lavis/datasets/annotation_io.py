"""Reading annotation files so that a damaged one fails with its path and what is wrong with it, not with a
bare JSONDecodeError / UnicodeDecodeError / KeyError from deep inside a parser."""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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

"""Training checkpoints: written atomically, found again after a crash, checked before use, read as data only.

A checkpoint holds the trainable tensors, optimizer and scaler state, every rank's RNG state, the data position
and the resolved config: megabytes, not the frozen gigabytes.

torch.save writes a zip archive with a CRC-32 per record, but torch.load never checks them: a file with flipped
bytes loads and trains on garbage weights. `verify_checkpoint` checks every CRC (and that the archive is complete)
before a checkpoint is used; a damaged one is moved aside and the previous intact one is resumed from instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_PATTERN = re.compile(r"^checkpoint_(\d{8})\.pth$")
TMP_PATTERN = re.compile(r"^\.checkpoint_\d{8}\.pth\.tmp-\d+$")  # save_atomic's temporary names
DAMAGED_SUFFIX = ".damaged"  # a checkpoint that failed verification is renamed to this; it no longer matches

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    pass


class CheckpointDamagedError(ValueError):
    pass


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint_{step:08d}.pth"


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same directory, flush to disk, then rename over the target.

    A crash at any moment leaves either the previous file or the complete new one, never a partial file
    under the checkpoint name; the temporary name does not match `CKPT_PATTERN`, so it is never resumed from.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, read-only or vanished directory
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoints in {path.parent} are "
            "untouched. Free space or fix permissions there, then resume with run.resume_ckpt_path=auto"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed (kill -9, node loss): they are never
    resumed from, but each can be as large as a checkpoint. Call it only while no write is in progress."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    stale = sorted(p for p in out.iterdir() if TMP_PATTERN.match(p.name))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for path in list_checkpoints(output_dir)[:-keep]:
        path.unlink(missing_ok=True)


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointDamagedError unless `path` is a complete torch archive whose every record matches its CRC."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # empty, truncated, not a zip archive, unreadable
        with path.open("rb") as f:
            head = f.read(4)
        if head and head != b"PK\x03\x04":
            raise CheckpointDamagedError(f"{path} is not a checkpoint: checkpoints are torch.save zip archives read "
                                         "weights_only, and this file is not one (a plain pickle or a legacy torch "
                                         "file?)") from e
        raise CheckpointDamagedError(f"{path} is damaged: an incomplete checkpoint archive ({e}); it was cut off "
                                     "while written or copied") from e
    if bad is not None:
        raise CheckpointDamagedError(f"{path} is damaged: record {bad} does not match its CRC-32 (flipped bytes)")


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 of the file: what evaluation results record to say which checkpoint they score."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def latest_intact_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in `output_dir` that passes verification. Each damaged newer one is renamed to
    `*.pth.damaged` (kept for inspection, never resumed from or pruned by step) with a warning naming it."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointDamagedError as e:
            aside = path.with_name(path.name + DAMAGED_SUFFIX)
            os.replace(path, aside)
            log.warning("%s; moved it to %s and falling back to the previous checkpoint", e, aside.name)
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"{path}: not a readable checkpoint (loaded with weights_only=True): {e}") from e


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain numbers (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

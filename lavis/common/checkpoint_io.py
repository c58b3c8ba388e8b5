"""Reading weight files as data, and loading them into modules with a readable report."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path, key: str | None = "model") -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or a torch file (`weights_only`: a checkpoint is data, never code).

    LAVIS-style files wrap the tensors in `{"model": ...}`; `key` unwraps that when present.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path and the reason
        raise ValueError(f"{path}: cannot be read as plain tensors (weights_only=True): {e}") from e
    if key and isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        obj = obj[key]
    return obj


def _group(names: list[str], depth: int = 2) -> dict[str, int]:
    groups: dict[str, int] = defaultdict(int)
    for name in names:
        groups[".".join(name.split(".")[:depth])] += 1
    return dict(groups)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> tuple[list[str], list[str]]:
    """Copy `state` into `module`; a shape mismatch is an error naming the key; missing and unexpected keys
    are logged grouped by module and returned (the caller decides whether they matter)."""
    own = module.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(f"{where}: shape mismatch for {len(mismatched)} tensor(s): " + "; ".join(mismatched[:10]))
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing:
        log.warning("%s: %d missing keys, by module: %s", where, len(missing), _group(missing))
    if unexpected:
        log.warning("%s: %d unexpected keys, by module: %s", where, len(unexpected), _group(unexpected))
    log.info("%s: loaded %d tensors", where, len(state) - len(unexpected))
    return missing, unexpected

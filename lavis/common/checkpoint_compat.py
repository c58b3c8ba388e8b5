"""Whether a checkpoint fits the config it is loaded with: one comparison for resuming (run.resume_ckpt_path),
fine-tuning (run.load_ckpt_path in training), evaluation (run.load_ckpt_path in evaluate.py) and tools/caption.py.

A checkpoint holds only the trainable tensors; the frozen gigabytes (encoders, Q-Former base, LLM) come from the
files the config names. Loaded with other frozen weights or other settings, the same tensors compute something else,
silently. So a checkpoint also holds the resolved config it was trained with (`state["config"]`), and in it the
fingerprints of the weight files that run read (`weight_fingerprints`, written by lavis/common/preflight.py). Here:
  * a frozen-weight path this config leaves unset is taken from the checkpoint's config (logged);
  * a model setting that differs is refused, naming each key, its two values and where the current one was set,
    unless it is one that leaves the loaded tensors' meaning unchanged for the purpose (generation settings at
    evaluation, `grad_checkpointing` always, ...); `run.allow_config_change=true` goes on knowingly, with a warning;
  * a weight file is compared by content fingerprint, not by path: a moved copy is the same weights, a file
    replaced in place is not.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from lavis.common.config import ResolvedConfig, is_path_key, is_weight_path, path_fields
from lavis.common.config_schema import ConfigError

log = logging.getLogger(__name__)

FINGERPRINTS_KEY = "weight_fingerprints"  # top-level key of a run's resolved config (and so of its checkpoints)
# A fingerprint reads this much from each end of a file. Why not a full SHA-256: ViT-g is 2 GB and FlanT5-XXL 45 GB,
# minutes per launch on a network filesystem, on every rank. Why not the mtime: a copy (cp, a new node's local
# disk) changes it without changing a byte, and would refuse the same weights. Size + both ends catch another file
# in practice: a torch zip archive ends with its central directory, which holds the CRC-32 of every tensor record,
# so its tail covers the whole content; a safetensors file starts with its header (every name, shape, offset). Left
# uncaught: a same-size raw file edited only in its middle.
FINGERPRINT_ENDS_BYTES = 1 << 20
ABSENT = "<absent>"


class Purpose(str, Enum):
    resume = "resume"
    fine_tune = "fine-tune"  # run.load_ckpt_path in training: the tensors start a new run
    evaluate = "evaluate"
    caption = "caption"
    export = "export"  # tools/export_blip2_checkpoint.py


# Keys that may differ without changing what the loaded tensors mean, per purpose (fnmatch patterns on dotted keys)
_NO_EFFECT = (
    "model.llm.grad_checkpointing",  # recomputation only: the same numbers
    "model.encoders.*.allow_random_weights",  # permissions, not weights (the fingerprints compare those)
    "model.qformers.*.allow_random_weights",
)
_INFERENCE_ONLY = (
    "model.generation.*",  # decoding is the evaluation's choice
    "model.encoders.*.params.img_size",  # the position embedding is interpolated (the reference evaluates at 364)
    "model.llm.dtype",
    "model.modalities.*.losses.*",  # loss weights matter only to training (which heads exist: checked on load)
    "model.itc_label_smoothing",
    "model.qformers.*.config.dropout",  # off in eval mode
    "model.lora.*.dropout",
)
FREE_KEYS: dict[Purpose, tuple[str, ...]] = {
    Purpose.resume: _NO_EFFECT,
    Purpose.fine_tune: _NO_EFFECT + _INFERENCE_ONLY,
    Purpose.evaluate: _NO_EFFECT + _INFERENCE_ONLY,
    Purpose.caption: _NO_EFFECT + _INFERENCE_ONLY,
    Purpose.export: _NO_EFFECT + _INFERENCE_ONLY,
}
_CONSEQUENCE = {
    Purpose.resume: "resuming would mix two models",
    Purpose.fine_tune: "its tensors were trained for another model",
    Purpose.evaluate: "the scores would not be those of the trained model",
    Purpose.caption: "the captions would not be those of the trained model",
    Purpose.export: "the exported file would not hold the trained model",
}


# ---- fingerprints ------------------------------------------------------------------------------------------------
def file_fingerprint(path: Path) -> str:
    """'size:sha256 of the first and last FINGERPRINT_ENDS_BYTES' (the whole file when it is smaller)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_ENDS_BYTES))
        if size > FINGERPRINT_ENDS_BYTES:
            f.seek(max(FINGERPRINT_ENDS_BYTES, size - FINGERPRINT_ENDS_BYTES))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()[:32]}"


# In a folder (an HF model or tokenizer directory) the files that make its outputs: weights, configs, vocabularies;
# not a README or licence, which differ between copies of the same model
FOLDER_CONTENT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json", ".txt", ".model")


def fingerprint(path: str | Path) -> Optional[str]:
    """A file's fingerprint; a folder's over its content files' names and fingerprints; None when the path does
    not exist."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and file.suffix in FOLDER_CONTENT_SUFFIXES and not any(
                part.startswith(".") for part in relative.parts):
            digest.update(f"{relative}={file_fingerprint(file)}\n".encode())
    return f"dir:{digest.hexdigest()[:32]}"


def weight_fingerprints(cfg: ResolvedConfig) -> dict[str, str]:
    """{model key: fingerprint} of every file or folder the model config names that exists (weights, the LLM
    directory, tokenizers); weight paths are skipped under `random_init` (they are not read)."""
    random_init = getattr(cfg.model, "random_init", False)
    found = {}
    for key, value in path_fields(cfg.model, "model"):
        if random_init and is_weight_path(key):
            continue
        fp = fingerprint(value)
        if fp is not None:
            found[key] = fp
    return found


# ---- differences -------------------------------------------------------------------------------------------------
def config_differences(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two plain config trees, as 'key: old -> new'."""
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in _differences(old, new, prefix)]


def _differences(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key, ABSENT), new.get(key, ABSENT), f"{prefix}.{key}")
        return out
    return [] if old == new else [(prefix, old, new)]


def _setting_differences(saved_model: dict, cfg: ResolvedConfig, purpose: Purpose) -> list[str]:
    """The model settings (not paths: `_weight_differences` compares those by content) that differ and matter."""
    current = OmegaConf.to_container(cfg.yaml.model)
    free = FREE_KEYS[purpose]
    return [
        f"{key}: {old!r} -> {new!r} (set by {cfg.source_of(key)})"
        for key, old, new in _differences(saved_model, current, "model")
        if not is_path_key(key) and not any(fnmatch.fnmatchcase(key, p) for p in free)
    ]


def _weight_differences(saved_model: dict, saved_fps: dict[str, str], cfg: ResolvedConfig) -> list[str]:
    current_model = OmegaConf.to_container(cfg.yaml.model)
    current_fps = cfg.yaml.get(FINGERPRINTS_KEY) or {}
    out = []
    keys = {key for key, _, _ in _differences(saved_model, current_model, "model") if is_path_key(key)}
    keys |= set(saved_fps) | set(current_fps)
    saved = OmegaConf.create({"model": saved_model})
    for key in sorted(keys):
        old, new = OmegaConf.select(saved, key, default=None), OmegaConf.select(cfg.yaml, key, default=None)
        if new is None and OmegaConf.select(cfg.yaml, key.rsplit(".", 1)[0], default=None) is None:
            continue  # the part is gone here (a removed encoder): the settings differences name it
        old_fp, new_fp = saved_fps.get(key), current_fps.get(key)
        if old_fp is not None and old_fp == new_fp:
            if old != new:
                log.info("%s: %s holds the same weights as the checkpoint's %s", key, new, old)
            continue
        if old == new and (old_fp is None or new_fp is None):
            continue  # the same path, and no fingerprint on one side to compare
        note = "another file" if old != new else "the file changed since the checkpoint was written"
        out.append(f"{key}: {old!r} -> {new!r}, {note} (set by {cfg.source_of(key)})")
    return out


# ---- frozen paths the checkpoint supplies -----------------------------------------------------------------------
def _explicitly_unset(cfg: ResolvedConfig, key: str) -> bool:
    """Whether a layer sets `key: null` on purpose (a weight file left out knowingly)."""
    marker = object()
    return any(OmegaConf.select(layer, key, default=marker) is None for _, layer in cfg.layers)


def _assign(obj: Any, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(obj, dict):
        obj[parts[-1]] = value
    else:
        setattr(obj, parts[-1], value)


def supply_frozen_paths(saved_model: dict, cfg: ResolvedConfig, path: Path) -> list[str]:
    """Set each weight path this config leaves unset (and does not null on purpose) to the checkpoint's value: the
    frozen weights it was trained with. Returns the keys set."""
    if getattr(cfg.model, "random_init", False):
        return []
    supplied = []
    for key, value in path_fields(saved_model, "model"):
        if not is_weight_path(key) or OmegaConf.select(cfg.yaml, key, default=None) is not None \
                or _explicitly_unset(cfg, key):
            continue
        parent = OmegaConf.select(cfg.yaml, key.rsplit(".", 1)[0], default=None)
        if parent is None:
            continue  # the part itself is gone here (a removed modality's encoder): nothing to supply
        if not Path(value).exists():
            raise ConfigError(
                f"{cfg.source_of(key)}: {key} is not set, and the file the checkpoint {path} was trained with "
                f"({value}) does not exist here. Set {key} to that file's copy (--options {key}=...)", key=key)
        OmegaConf.update(cfg.yaml, key, value, merge=True)
        _assign(cfg.model, key.split(".")[1:], value)
        log.info("%s: not set, taking the checkpoint's: %s (the file %s was trained with)", key, value, path.name)
        supplied.append(key)
    return supplied


# ---- the check ---------------------------------------------------------------------------------------------------
def check_checkpoint_config(saved_config: Optional[dict], cfg: ResolvedConfig, path: Path, purpose: Purpose,
                            current_fingerprints: Optional[dict[str, str]] = None) -> list[str]:
    """Compare the config a checkpoint was written with to `cfg` for `purpose`, after taking the checkpoint's frozen
    weight paths where `cfg` sets none. Refuses every difference that changes the outputs (ConfigError, naming each)
    unless `run.allow_config_change`; then warns and returns them. `current_fingerprints`: this run's, computed by
    the caller after the paths are supplied (default: the ones recorded in cfg.yaml)."""
    if not saved_config or "model" not in saved_config:
        log.warning("%s holds no training config (e.g. a converted release): its fit to %s cannot be checked",
                    path, cfg.cfg_path)
        return []
    saved_model = saved_config["model"]
    if current_fingerprints is not None:
        cfg.yaml[FINGERPRINTS_KEY] = current_fingerprints
    changes = _setting_differences(saved_model, cfg, purpose)
    changes += _weight_differences(saved_model, saved_config.get(FINGERPRINTS_KEY) or {}, cfg)
    return _verdict(changes, cfg, path, purpose, warn=True)


def check_settings(saved_model: dict, cfg: ResolvedConfig, path: Path, purpose: Purpose, warn: bool = True) -> None:
    """The settings half of `check_checkpoint_config` (paths and fingerprints aside), for a caller that holds only
    the checkpoint's model section. `warn=False`: quiet when allowed (the full check warned already)."""
    _verdict(_setting_differences(saved_model, cfg, purpose), cfg, path, purpose, warn)


def _verdict(changes: list[str], cfg: ResolvedConfig, path: Path, purpose: Purpose, warn: bool) -> list[str]:
    if not changes:
        return []
    listing = "; ".join(changes[:20]) + ("; ..." if len(changes) > 20 else "")
    if not cfg.run.allow_config_change:
        raise ConfigError(
            f"{path} was written with a different model config, so {_CONSEQUENCE[purpose]} ({purpose.value}): "
            f"{listing}. Restore these settings, or pass --options run.allow_config_change=true to go on knowingly",
            key="run.allow_config_change")
    if warn:
        log.warning("%s: going on although the model config differs (run.allow_config_change): %s", path, listing)
    return changes

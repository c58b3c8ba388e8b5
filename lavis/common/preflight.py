"""What a run checks after its config is loaded and before anything is built or any weight is read (set_up_run calls
`preflight` once, before the resolved config is logged). load_config has checked keys, types, registered names and
the model's cross-references; here come the checks that need the dataset builders or the files:
  * every dataset path (naming the key and where it was set);
  * each dataset against its modality: the encoder input key its items carry (image, points) and the length of their
    region_geometry against the modality's region kind;
  * run.load_ckpt_path (and an explicit run.resume_ckpt_path): it exists, and the config it was trained with fits
    this one (lavis/common/checkpoint_compat.py), which may also supply frozen-weight paths left unset here;
  * every frozen part loads weights, or a setting says random weights are meant.
Every rank runs the checks; they agree on one verdict, so all ranks stop together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from lavis.common import dist as dist_utils
from lavis.common.checkpoint import latest_checkpoint, load_checkpoint
from lavis.common.checkpoint_compat import (
    FINGERPRINTS_KEY,
    Purpose,
    check_checkpoint_config,
    supply_frozen_paths,
    weight_fingerprints,
)
from lavis.common.config import ResolvedConfig, check_dataset_paths
from lavis.common.config_schema import ConfigError
from lavis.common.registry import MODELS, REGION_KINDS, RegistryError

log = logging.getLogger(__name__)

LOAD_KEY, RESUME_KEY = "run.load_ckpt_path", "run.resume_ckpt_path"


@dataclass
class Preflight:
    builders: dict[str, Any]  # dataset name -> its builder
    load_path: Optional[Path] = None  # the checkpoint of run.load_ckpt_path
    load_state: Optional[dict] = None  # its contents, read once


def preflight(cfg: ResolvedConfig, training: bool, resume_from: Optional[Path] = None) -> Preflight:
    """All the checks, on every rank; the first failure on any rank stops every rank with that message (a rank
    that failed alone, e.g. on a node-local path, would otherwise leave the others waiting in a collective)."""
    result, error = None, None
    try:
        result = _checks(cfg, training, resume_from)
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
        error = e
    verdict = None if error is None else (isinstance(error, ConfigError), str(error))
    verdicts = dist_utils.all_gather_objects(verdict)
    if error is not None:
        raise error
    for rank, failed in enumerate(verdicts):
        if failed is not None:
            is_config, message = failed
            raise ConfigError(message) if is_config else RuntimeError(f"rank {rank} failed its checks: {message}")
    return result


def _checks(cfg: ResolvedConfig, training: bool, resume_from: Optional[Path]) -> Preflight:
    builders = build_builders(cfg)
    check_dataset_paths(cfg, builders, cfg.cfg_path)
    check_item_keys(cfg, builders)
    check_task_prompts(cfg)
    found = Preflight(builders)
    checkpoints: list[tuple[Path, Optional[dict], Purpose]] = []
    if cfg.run.load_ckpt_path:
        found.load_path = checkpoint_file(cfg.run.load_ckpt_path, LOAD_KEY, cfg.source_of(LOAD_KEY))
        found.load_state = read_checkpoint(found.load_path, LOAD_KEY, cfg.source_of(LOAD_KEY))
        checkpoints.append((found.load_path, found.load_state.get("config"),
                            Purpose.fine_tune if training else Purpose.evaluate))
    if resume_from is not None:
        checkpoints.append((resume_from, saved_config(resume_from, RESUME_KEY, cfg), Purpose.resume))
    check_weights(cfg, checkpoints)
    return found


def check_weights(cfg: ResolvedConfig, checkpoints: list[tuple[Path, Optional[dict], Purpose]]) -> None:
    """Each checkpoint's frozen-weight paths fill the ones `cfg` leaves unset; then every frozen part must load
    weights; then each checkpoint's config must fit (checkpoint_compat), weight files compared by fingerprint."""
    for path, saved, _ in checkpoints:
        if saved and "model" in saved:
            supply_frozen_paths(saved["model"], cfg, path)
    check_frozen_weights(cfg)
    cfg.yaml[FINGERPRINTS_KEY] = weight_fingerprints(cfg)  # saved with config.yaml and every checkpoint of the run
    for path, saved, purpose in checkpoints:
        check_checkpoint_config(saved, cfg, path, purpose)


def load_for_inference(cfg: ResolvedConfig, value: Optional[str], key: str, source: str,
                       purpose: Purpose) -> Optional[dict]:
    """For a tool that builds the model itself (tools/caption.py, tools/export_blip2_checkpoint.py): the checkpoint
    `value` names (a file or a run folder; None: none), read and checked as preflight checks run.load_ckpt_path, and
    the frozen weights checked; all before the model is built."""
    if not value:
        check_weights(cfg, [])
        return None
    path = checkpoint_file(value, key, source)
    state = read_checkpoint(path, key, source)
    check_weights(cfg, [(path, state.get("config"), purpose)])
    return state


# ---- datasets ----------------------------------------------------------------------------------------------------
def build_builders(cfg: ResolvedConfig) -> dict[str, Any]:
    """Each dataset's builder; a builder refusing its config (a bad option value) names the dataset's source."""
    builders = {}
    for name, ds in cfg.datasets.items():
        try:
            builders[name] = cfg.builder_of(name)(ds)
        except (ValueError, RegistryError) as e:
            raise ConfigError(f"{cfg.source_of(f'datasets.{name}')}: datasets.{name}: {e}",
                              key=f"datasets.{name}") from None
    return builders


def check_item_keys(cfg: ResolvedConfig, builders: dict[str, Any]) -> None:
    """Each dataset's items carry what its modality reads: the encoder's input key, and region_geometry of the
    length of the modality's region kind. A builder or model that does not declare these is not checked."""
    reads = MODELS.get(cfg.model_arch).modality_inputs(cfg.model)
    for name, builder in builders.items():
        ds = cfg.datasets[name]
        wanted = reads.get(ds.modality)
        if wanted is None or not hasattr(builder, "item_keys"):
            continue
        for split in dict.fromkeys(s for s in (ds.train_split, ds.eval_split) if s):
            try:
                has = builder.item_keys(split)
            except (ValueError, RegistryError) as e:
                raise ConfigError(f"{cfg.source_of(f'datasets.{name}')}: datasets.{name}: {e}",
                                  key=f"datasets.{name}") from None
            if has.input_key != wanted.input_key:
                fitting = [m for m, keys in reads.items() if keys.input_key == has.input_key]
                key = f"datasets.{name}.modality"
                raise ConfigError(
                    f"{cfg.source_of(key)}: {key} is '{ds.modality}', whose encoder reads '{wanted.input_key}' "
                    f"(model.modalities.{ds.modality}), but the items of datasets.{name} (builder "
                    f"'{ds.builder or name}', split '{split}') carry '{has.input_key}'. Give it a modality of a "
                    f"'{has.input_key}' encoder: {', '.join(fitting) or 'none is configured'}", key=key)
            if wanted.geometry_dim is not None and has.geometry_dim != wanted.geometry_dim:
                raise ConfigError(_geometry_mismatch(cfg, name, ds.modality, split, has.geometry_dim,
                                                     wanted.geometry_dim), key=f"model.modalities.{ds.modality}")
            if wanted.region_mask and not has.region_mask:
                key = f"model.modalities.{ds.modality}.region"
                raise ConfigError(
                    f"{cfg.source_of(key)}: {key} is a region kind with a mask, but the items of datasets.{name} "
                    f"(builder '{ds.builder or name}', split '{split}') carry no region_mask: give the dataset a "
                    "modality of a box kind, or use mask data (the instructions / osprey724k builders)", key=key)


def check_task_prompts(cfg: ResolvedConfig) -> None:
    """Each dataset's `task_prompt` names one of model.task_prompts that fits its modality (a model that declares
    instruction templates: `dataset_instruction`)."""
    template_of = getattr(MODELS.get(cfg.model_arch), "dataset_instruction", None)
    if template_of is None:
        return
    for name, ds in cfg.datasets.items():
        if getattr(ds, "task_prompt", None) is None:
            continue
        key = f"datasets.{name}.task_prompt"
        try:
            template_of(cfg.model, ds.modality, ds.task_prompt)
        except ConfigError as e:
            raise ConfigError(f"{cfg.source_of(key)}: {key}: {e}", key=key) from None


def _geometry_mismatch(cfg: ResolvedConfig, name: str, modality: str, split: str, has: Optional[int],
                       wanted: int) -> str:
    key = f"model.modalities.{modality}.region"
    region = OmegaConf.select(cfg.yaml, key, default=None)
    carried = f"region_geometry of {has} values per sample" if has else "no region_geometry"
    fitting = [k for k in REGION_KINDS.names() if REGION_KINDS.get(k).dim == has] if has else []
    fix = (f"set {key} to a kind of {has} values ({', '.join(fitting)})" if fitting else
           f"give datasets.{name} a holistic modality (one with region: null), or use a dataset with regions")
    return (f"{cfg.source_of(key)}: {key} is {region!r}, whose region_geometry has {wanted} values, but the items of "
            f"datasets.{name} (modality '{modality}', split '{split}') carry {carried}: {fix}")


# ---- checkpoints -------------------------------------------------------------------------------------------------
def checkpoint_file(value: str, key: str, source: str) -> Path:
    """A checkpoint file, or a training run folder's latest checkpoint; a ConfigError naming `key` otherwise."""
    path = Path(value)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ConfigError(f"{source}: {key} = {value} is a folder without checkpoint_*.pth files; name a "
                              "checkpoint file or a training run's output_dir", key=key)
        return found
    if not path.is_file():
        raise ConfigError(f"{source}: {key} = {value} does not exist; name a checkpoint file or a training run's "
                          "output_dir (its latest checkpoint is taken)", key=key)
    return path


def read_checkpoint(path: Path, key: str, source: str) -> dict:
    try:
        return load_checkpoint(path)
    except (ValueError, OSError) as e:  # damaged, or not a checkpoint
        raise ConfigError(f"{source}: {key}: {e}", key=key) from None


def saved_config(path: Path, key: str, cfg: ResolvedConfig) -> Optional[dict]:
    """The training config a checkpoint holds, read without its tensors (memory-mapped; the runner loads and
    verifies the whole file when it resumes)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - not a readable checkpoint, re-raised naming the key
        raise ConfigError(f"{cfg.source_of(key)}: {key}: {path} is not a readable checkpoint: {e}", key=key) from None
    return state.get("config") if isinstance(state, dict) else None


# ---- frozen weights ----------------------------------------------------------------------------------------------
def check_frozen_weights(cfg: ResolvedConfig) -> None:
    """A frozen part that would load no weights stays at its random init, and the run computes garbage without an
    error: refused, unless a setting says random weights are meant (then logged)."""
    random_ok, missing = [], []
    for part in MODELS.get(cfg.model_arch).frozen_parts(cfg.model):
        if part.weights_key is not None:
            log.info("%s (frozen): weights from %s = %s", part.key, part.weights_key,
                     OmegaConf.select(cfg.yaml, part.weights_key, default=None))
            continue
        (random_ok if part.random_allowed_by else missing).append(part)
    for part in random_ok:
        log.warning("%s is frozen and keeps random weights (%s is set)", part.key, part.random_allowed_by)
    if missing:
        lines = [f"{part.key}: {part.fix}" for part in missing]
        raise ConfigError(
            f"{cfg.source_of(missing[0].key)}: frozen part(s) with no weights to load; they would stay random and "
            "the outputs garbage:\n  " + "\n  ".join(lines), key=missing[0].key)

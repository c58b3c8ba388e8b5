"""Run configuration: the user's YAML over the model's and datasets' default YAMLs, `--options` over all.

    model:    {arch, model_type, ...fields of the model class's Config}
    datasets: {<name>: {builder, modality, batch_size, ...fields of the builder's Config}}
    run:      RunConfig fields

Everything is validated before any weight or data is read; each error names the source file (or --options),
the key, and the nearest valid key.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf

from lavis.common.caption_metrics import CaptionMetricsConfig
from lavis.common.config_schema import ConfigError, merge_checked
from lavis.common.optim import LRScheduleConfig, OptimizerConfig
from lavis.common.registry import DATASET_BUILDERS, LR_SCHEDULES, MODELS, RUNNERS, TASKS

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
TOP_LEVEL_KEYS = ("model", "datasets", "run")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class ModalitySchedule(str, Enum):
    sequential = "sequential"
    interleaved = "interleaved"


@dataclass
class RunConfig:
    output_dir: str = "???"
    task: str = "pretrain"
    runner: str = "epoch_runner"
    imports: List[str] = field(default_factory=list)  # extra modules that register models/datasets (plugins)
    seed: int = 42
    device: Device = Device.auto
    amp: Precision = Precision.bf16  # on GPU; the CPU always runs fp32
    max_epoch: int = 1
    modality_schedule: ModalitySchedule = ModalitySchedule.sequential
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    accum_grad_iters: int = 1
    grad_clip_norm: float = 1.0  # 0 disables clipping
    max_nonfinite_steps_in_row: int = 5  # skipped non-finite steps in a row before the run stops with a report
    log_every_steps: int = 10
    ckpt_every_steps: int = 0  # 0: only at epoch end
    keep_ckpts: int = 3  # 0 keeps all
    resume_ckpt_path: Optional[str] = None  # a checkpoint file, or "auto" for the latest in output_dir
    allow_config_change: bool = False  # resume although the model config differs from the checkpoint's
    load_ckpt_path: Optional[str] = None  # trainable tensors to start from (a file, or a run dir: its latest)
    num_workers: int = 2
    max_bad_sample_fraction: float = 0.01
    bad_sample_check_after: int = 1000  # samples seen before the fraction is enforced (always at epoch end)
    trace_samples: bool = False  # write the sample ids of every step to samples_rank{r}.jsonl
    tensorboard: bool = True
    dist_timeout_s: int = 1800
    caption_metrics: CaptionMetricsConfig = field(default_factory=CaptionMetricsConfig)  # evaluation scoring


@dataclass
class ResolvedConfig:
    """The validated config: typed objects for the code, the merged YAML for saving and printing."""

    run: RunConfig
    model_arch: str
    model: Any
    datasets: dict[str, Any]  # name -> builder Config instance
    yaml: DictConfig

    def builder_of(self, name: str):
        return DATASET_BUILDERS.get(self.datasets[name].builder or name)


def _load_yaml(path: str | Path, what: str) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - a YAML syntax error, re-raised with the file
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return cfg


def _section(cfg: DictConfig, key: str) -> DictConfig:
    node = cfg.get(key)
    return node if node is not None else OmegaConf.create({})


def _check_top_level(cfg: DictConfig, source: str) -> None:
    for key in cfg.keys():
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown top-level key '{key}'.{hint} A run YAML has: model, datasets, run")


def _import_plugins(user: DictConfig, options: DictConfig) -> None:
    names = list(OmegaConf.select(user, "run.imports", default=[]) or [])
    names += list(OmegaConf.select(options, "run.imports", default=[]) or [])
    for name in names:
        importlib.import_module(name)


def _resolve_model(user: DictConfig, options: DictConfig, cfg_path: str) -> tuple[str, str | None, DictConfig]:
    model_user, model_opts = _section(user, "model"), _section(options, "model")
    arch = model_opts.get("arch") or model_user.get("arch")
    if not arch:
        raise ConfigError(f"{cfg_path}: model.arch is not set; registered models: {', '.join(MODELS.names())}")
    cls = MODELS.get(arch)
    model_type = model_opts.get("model_type") or model_user.get("model_type")
    sources: list[tuple[str, Any]] = []
    if model_type is not None:
        if model_type not in cls.DEFAULT_CONFIGS:
            close = difflib.get_close_matches(str(model_type), list(cls.DEFAULT_CONFIGS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{cfg_path}: model.model_type '{model_type}' is not one of {sorted(cls.DEFAULT_CONFIGS)} "
                f"for model '{arch}'.{hint}"
            )
        default_path = CONFIG_ROOT / cls.DEFAULT_CONFIGS[model_type]
        default = _section(_load_yaml(default_path, "model default config"), "model")
        sources.append((str(default_path), _without(default, ("arch", "model_type"))))
    sources.append((cfg_path, _without(model_user, ("arch", "model_type"))))
    sources.append(("--options", _without(model_opts, ("arch", "model_type"))))
    merged = merge_checked(OmegaConf.structured(cls.Config), sources, prefix="model")
    return arch, model_type, merged


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    data = OmegaConf.to_container(cfg, resolve=False)
    return OmegaConf.create({k: v for k, v in data.items() if k not in keys})


def _resolve_datasets(user: DictConfig, options: DictConfig, cfg_path: str) -> dict[str, DictConfig]:
    user_sets, opt_sets = _section(user, "datasets"), _section(options, "datasets")
    for name in opt_sets.keys():
        if name not in user_sets:
            raise ConfigError(
                f"--options: dataset '{name}' is not in {cfg_path}; its datasets: {list(user_sets.keys())}"
            )
    resolved = {}
    for name, entry in user_sets.items():
        entry = entry if entry is not None else OmegaConf.create({})
        builder_name = entry.get("builder") or name
        builder = DATASET_BUILDERS.get(builder_name)
        sources: list[tuple[str, Any]] = []
        if getattr(builder, "DEFAULT_CONFIG", None):
            default_path = CONFIG_ROOT / builder.DEFAULT_CONFIG
            sources.append((str(default_path), _load_yaml(default_path, "dataset default config")))
        sources.append((cfg_path, entry))
        sources.append(("--options", opt_sets.get(name)))
        resolved[str(name)] = merge_checked(OmegaConf.structured(builder.Config), sources, prefix=f"datasets.{name}")
    if not resolved:
        raise ConfigError(f"{cfg_path}: no datasets given under 'datasets:'")
    return resolved


def _missing_required(node: DictConfig, prefix: str, cfg_path: str) -> None:
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        keys = ", ".join(f"{prefix}.{k}" for k in missing)
        raise ConfigError(
            f"{cfg_path}: required key(s) not set: {keys}; set them in the YAML or with --options key=value"
        )


def _path_fields(obj: Any, prefix: str) -> list[tuple[str, str]]:
    """(key, value) of every set field named *_path, *_root, *_file or path, recursively."""
    found = []
    if is_dataclass(obj):
        items = [(f.name, getattr(obj, f.name)) for f in fields(obj)]
    elif isinstance(obj, dict):
        items = list(obj.items())
    else:
        return found
    for name, value in items:
        key = f"{prefix}.{name}"
        if isinstance(value, str) and value and (name == "path" or name.endswith(("_path", "_root", "_file"))):
            found.append((key, value))
        else:
            found.extend(_path_fields(value, key))
    return found


# Fields naming pretrained weights; with `model.random_init: true` they are neither read nor required to exist.
WEIGHT_PATH_SUFFIXES = ("checkpoint_path", "init_path")


def is_weight_path(key: str) -> bool:
    return key.endswith(WEIGHT_PATH_SUFFIXES)


def check_model_paths(model_cfg: Any, cfg_path: str) -> None:
    fields_ = _path_fields(model_cfg, "model")
    if getattr(model_cfg, "random_init", False):
        fields_ = [(key, value) for key, value in fields_ if not is_weight_path(key)]
    errors = [f"{key} = {value}" for key, value in fields_ if not Path(value).exists()]
    if errors:
        raise ConfigError(
            f"{cfg_path}: path(s) that do not exist: {'; '.join(errors)}. Fix them in the YAML or with --options"
        )


def load_config(cfg_path: str, options: list[str] | None = None) -> ResolvedConfig:
    user = _load_yaml(cfg_path, "config file")
    try:
        opts = OmegaConf.from_dotlist(list(options or []))
    except Exception as e:  # noqa: BLE001 - a malformed key=value, re-raised with the flag
        raise ConfigError(f"--options: cannot parse {options}: {e}") from None
    _check_top_level(user, cfg_path)
    _check_top_level(opts, "--options")
    _import_plugins(user, opts)

    run_sources = [(cfg_path, _section(user, "run")), ("--options", _section(opts, "run"))]
    run = merge_checked(OmegaConf.structured(RunConfig), run_sources, prefix="run")
    arch, model_type, model = _resolve_model(user, opts, cfg_path)
    datasets = _resolve_datasets(user, opts, cfg_path)

    _missing_required(run, "run", cfg_path)
    _missing_required(model, "model", cfg_path)
    for name, node in datasets.items():
        _missing_required(node, f"datasets.{name}", cfg_path)

    run_obj: RunConfig = OmegaConf.to_object(run)
    TASKS.get(run_obj.task)
    RUNNERS.get(run_obj.runner)
    LR_SCHEDULES.get(run_obj.lr_schedule.name)
    model_obj = OmegaConf.to_object(model)
    dataset_objs = {name: OmegaConf.to_object(node) for name, node in datasets.items()}

    modalities = getattr(model_obj, "modalities", None)
    for name, ds in dataset_objs.items():
        if modalities is not None and ds.modality not in modalities:
            raise ConfigError(
                f"{cfg_path}: datasets.{name}.modality '{ds.modality}' is not a key of model.modalities "
                f"({', '.join(modalities)})"
            )
    check_model_paths(model_obj, cfg_path)

    yaml = OmegaConf.create({
        "model": {"arch": arch, "model_type": model_type, **OmegaConf.to_container(model, enum_to_str=True)},
        "datasets": {name: OmegaConf.to_container(node, enum_to_str=True) for name, node in datasets.items()},
        "run": OmegaConf.to_container(run, enum_to_str=True),
    })
    return ResolvedConfig(run=run_obj, model_arch=arch, model=model_obj, datasets=dataset_objs, yaml=yaml)


def check_dataset_paths(cfg: ResolvedConfig, builders: dict[str, Any], cfg_path: str) -> None:
    problems = [f"datasets.{name}: {msg}" for name, b in builders.items() for msg in b.check_paths()]
    if problems:
        raise ConfigError(f"{cfg_path}: dataset paths missing:\n  " + "\n  ".join(problems))


def save_config(cfg: ResolvedConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg.yaml))


def config_from_command_line(description: str, argv: list[str] | None = None) -> tuple[ResolvedConfig, str]:
    """`--cfg-path X [--options key=value ...]`, as train.py and evaluate.py take them: (config, its path)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="run YAML with model, datasets and run sections")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. run.max_epoch=2 datasets.refcoco.batch_size=8")
    args = parser.parse_args(argv)
    return load_config(args.cfg_path, args.options), args.cfg_path

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

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavis.common.caption_metrics import CaptionMetricsConfig
from lavis.common.config_schema import ConfigError, describe, merge_checked
from lavis.common.optim import LRScheduleConfig, OptimizerConfig
from lavis.common.registry import DATASET_BUILDERS, LR_SCHEDULES, MODELS, RUNNERS, TASKS, Registry, RegistryError

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
    compile: bool = False  # torch.compile each transformer block / Q-Former layer (lavis/common/compile.py)


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


def _mapping(value: Any, key: str, source: str) -> DictConfig:
    """A section as a mapping (empty when absent or null); anything else fails naming the key."""
    if value is None:
        return OmegaConf.create({})
    if not isinstance(value, DictConfig):
        raise ConfigError(f"{source}: bad value for '{key}': expected a mapping, got {describe(value)}")
    return value


def _section(cfg: DictConfig, key: str, source: str) -> DictConfig:
    return _mapping(cfg.get(key), key, source)


def _pick(key: str, user: DictConfig, options: DictConfig, cfg_path: str) -> tuple[Any, str]:
    """(value, where it was set): --options over the file."""
    source = _source_of(key, options, cfg_path)
    return (options if source == "--options" else user).get(key), source


def _source_of(key: str, options: DictConfig, cfg_path: str) -> str:
    """Where the dotted `key` was set: "--options" when given there, else the config file."""
    return "--options" if OmegaConf.select(options, key, default=None) is not None else cfg_path


def _registered(registry: Registry, name: Any, key: str, source: str, note: str = "") -> Any:
    """registry.get(name) with the file and key in the error (and the registry's suggestion kept)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: bad value for '{key}': expected a {registry.kind} name, got {describe(name)}")
    try:
        return registry.get(name)
    except RegistryError as e:
        raise ConfigError(
            f"{source}: bad value for '{key}'{note}: {e}. (A {registry.kind} from a plugin needs its module in "
            "run.imports.)"
        ) from None


def _check_top_level(cfg: DictConfig, source: str) -> None:
    for key in cfg.keys():
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown top-level key '{key}'.{hint} A run YAML has: model, datasets, run")


def _import_plugins(user_run: DictConfig, options_run: DictConfig, cfg_path: str) -> None:
    """Import the modules of run.imports of the file, then of --options (both lists are imported)."""
    for source, run in ((cfg_path, user_run), ("--options", options_run)):
        names = run.get("imports")
        if names is None:
            continue
        if not isinstance(names, ListConfig):
            raise ConfigError(
                f"{source}: bad value for 'run.imports': expected a list of module names, got {describe(names)}"
            )
        for i, name in enumerate(names):
            key = f"run.imports[{i}]"
            if not isinstance(name, str) or not name or name.startswith("."):
                raise ConfigError(f"{source}: bad value for '{key}': expected an absolute module name, "
                                  f"got {describe(name)}")
            try:
                importlib.import_module(name)
            except ImportError as e:  # the module, or something it imports, is missing
                raise ConfigError(f"{source}: {key}: cannot import '{name}': {e}") from e


def _resolve_model(user: DictConfig, options: DictConfig, cfg_path: str) -> tuple[str, str | None, DictConfig]:
    model_user, model_opts = _section(user, "model", cfg_path), _section(options, "model", "--options")
    arch, source = _pick("arch", model_user, model_opts, cfg_path)
    if arch is None or arch == "":
        raise ConfigError(f"{cfg_path}: model.arch is not set; registered models: {', '.join(MODELS.names())}")
    cls = _registered(MODELS, arch, "model.arch", source)
    model_type, source = _pick("model_type", model_user, model_opts, cfg_path)
    sources: list[tuple[str, Any]] = []
    if model_type is not None:
        if not isinstance(model_type, str) or model_type not in cls.DEFAULT_CONFIGS:
            close = difflib.get_close_matches(str(model_type), list(cls.DEFAULT_CONFIGS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: bad value for 'model.model_type': {describe(model_type)} is not one of "
                f"{sorted(cls.DEFAULT_CONFIGS)} for model '{arch}'.{hint}"
            )
        default_path = CONFIG_ROOT / cls.DEFAULT_CONFIGS[model_type]
        default = _section(_load_yaml(default_path, "model default config"), "model", str(default_path))
        sources.append((str(default_path), _without(default, ("arch", "model_type"))))
    sources.append((cfg_path, _without(model_user, ("arch", "model_type"))))
    sources.append(("--options", _without(model_opts, ("arch", "model_type"))))
    merged = merge_checked(OmegaConf.structured(cls.Config), sources, prefix="model")
    return arch, model_type, merged


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    data = OmegaConf.to_container(cfg, resolve=False)
    return OmegaConf.create({k: v for k, v in data.items() if k not in keys})


def _resolve_datasets(user: DictConfig, options: DictConfig, cfg_path: str) -> dict[str, DictConfig]:
    user_sets, opt_sets = _section(user, "datasets", cfg_path), _section(options, "datasets", "--options")
    for name in opt_sets.keys():
        if name not in user_sets:
            raise ConfigError(
                f"--options: dataset '{name}' is not in {cfg_path}; its datasets: {list(user_sets.keys())}"
            )
    resolved = {}
    for name in user_sets.keys():
        key = f"datasets.{name}"
        entry = _mapping(user_sets.get(name), key, cfg_path)
        entry_opts = _mapping(opt_sets.get(name), key, "--options")
        builder_name, source = _pick("builder", entry, entry_opts, cfg_path)
        if builder_name is None or builder_name == "":  # unset: the entry's name is the builder's name
            builder = _registered(DATASET_BUILDERS, str(name), f"{key}.builder", cfg_path,
                                  note=" (not set, so the entry's name is used)")
        else:
            builder = _registered(DATASET_BUILDERS, builder_name, f"{key}.builder", source)
        sources: list[tuple[str, Any]] = []
        if getattr(builder, "DEFAULT_CONFIG", None):
            default_path = CONFIG_ROOT / builder.DEFAULT_CONFIG
            sources.append((str(default_path), _load_yaml(default_path, "dataset default config")))
        sources.append((cfg_path, entry))
        sources.append(("--options", entry_opts))
        resolved[str(name)] = merge_checked(OmegaConf.structured(builder.Config), sources, prefix=key)
    if not resolved:
        raise ConfigError(f"{cfg_path}: no datasets given under 'datasets:'")
    return resolved


def _missing_required(node: DictConfig, prefix: str, cfg_path: str, hint: str = "") -> None:
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        keys = ", ".join(f"{prefix}.{k}" for k in missing)
        raise ConfigError(
            f"{cfg_path}: required key(s) not set: {keys}; set them in the YAML or with --options key=value{hint}"
        )


def _unmerged_defaults_hint(arch: str, model_type: str | None) -> str:
    """Said with a model error when no model_type chose a default YAML: that is the likely cause."""
    types = sorted(MODELS.get(arch).DEFAULT_CONFIGS)
    if model_type is not None or not types:
        return ""
    return f" (model.model_type is not set, so none of the default configs of '{arch}' {types} was merged)"


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
    user_run, opts_run = _section(user, "run", cfg_path), _section(opts, "run", "--options")
    _import_plugins(user_run, opts_run, cfg_path)

    run = merge_checked(OmegaConf.structured(RunConfig), [(cfg_path, user_run), ("--options", opts_run)], prefix="run")
    arch, model_type, model = _resolve_model(user, opts, cfg_path)
    datasets = _resolve_datasets(user, opts, cfg_path)
    defaults_hint = _unmerged_defaults_hint(arch, model_type)

    _missing_required(run, "run", cfg_path)
    _missing_required(model, "model", cfg_path, defaults_hint)
    for name, node in datasets.items():
        _missing_required(node, f"datasets.{name}", cfg_path)

    run_obj: RunConfig = OmegaConf.to_object(run)
    for key, registry in (("run.task", TASKS), ("run.runner", RUNNERS), ("run.lr_schedule.name", LR_SCHEDULES)):
        _registered(registry, OmegaConf.select(run, key[len("run."):]), key, _source_of(key, opts, cfg_path))
    model_obj = OmegaConf.to_object(model)
    dataset_objs = {name: OmegaConf.to_object(node) for name, node in datasets.items()}

    modalities = getattr(model_obj, "modalities", None)
    for name, ds in dataset_objs.items():
        if modalities is not None and ds.modality not in modalities:
            raise ConfigError(
                f"{_source_of(f'datasets.{name}.modality', opts, cfg_path)}: datasets.{name}.modality "
                f"'{ds.modality}' is not a key of model.modalities ({', '.join(modalities)}){defaults_hint}"
            )
    for name, ds in dataset_objs.items():
        if modalities is not None and hasattr(ds, "region_kind"):
            _resolve_region_kind(name, ds, modalities, _source_of(f"datasets.{name}.region_kind", opts, cfg_path))
            datasets[name].region_kind = ds.region_kind  # the saved config says which kind was used
    check_model_paths(model_obj, cfg_path)

    yaml = OmegaConf.create({
        "model": {"arch": arch, "model_type": model_type, **OmegaConf.to_container(model, enum_to_str=True)},
        "datasets": {name: OmegaConf.to_container(node, enum_to_str=True) for name, node in datasets.items()},
        "run": OmegaConf.to_container(run, enum_to_str=True),
    })
    return ResolvedConfig(run=run_obj, model_arch=arch, model=model_obj, datasets=dataset_objs, yaml=yaml)


def _resolve_region_kind(name: str, ds: Any, modalities: Any, source: str) -> None:
    """One source of truth for a dataset's region kind: unset takes the modality's region; a different one fails."""
    region = getattr(modalities[ds.modality], "region", None)
    if ds.region_kind is None:
        ds.region_kind = region
    elif ds.region_kind != region:
        raise ConfigError(
            f"{source}: datasets.{name}.region_kind is {ds.region_kind!r} but model.modalities.{ds.modality}.region "
            f"is {region!r}; the items would not fit the model. Make them agree, or leave region_kind unset to take "
            "the modality's"
        )


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

"""Run configuration: the user's YAML over the model's and datasets' default YAMLs, `--options` over all.

    model:    {arch, model_type, ...fields of the model class's Config}
    datasets: {<name>: {builder, modality, batch_size, ...fields of the builder's Config}}
    run:      RunConfig fields

A run YAML may extend another: `base: other.yaml` (relative to the YAML's own folder; chains allowed, cycles
refused) is merged under it, and both under `--options`. In a map of named sections (model.modalities, encoders,
qformers; datasets) `name: null` removes what a lower layer (a default YAML, a base) defined.

Everything is validated before any weight or data is read; each error names the source (the YAML file that set the
key, or `--options key=value`), the key, and the nearest valid key or a fix.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import traceback
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from lavis.common.caption_metrics import CaptionMetricsConfig
from lavis.common.config_schema import ConfigError, describe, merge_checked
from lavis.common.optim import LRScheduleConfig, OptimizerConfig
from lavis.common.registry import DATASET_BUILDERS, LR_SCHEDULES, MODELS, RUNNERS, TASKS, Registry, RegistryError

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
TOP_LEVEL_KEYS = ("model", "datasets", "run")
BASE_KEY = "base"  # a run YAML's parent (_file_layers)
# Written into a run's config.yaml (lavis/common/preflight.py: the weight files it read); ignored when read back
RECORD_KEYS = ("weight_fingerprints",)
OPTIONS = "--options"

Layer = tuple[str, DictConfig]  # (source: a file path or "--options key=value", its top-level mapping)


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
    hang_timeout_s: int = 600  # a rank whose heartbeat stops this long fails the job, named (0: no watchdog)
    caption_metrics: CaptionMetricsConfig = field(default_factory=CaptionMetricsConfig)  # evaluation scoring
    gallery_samples: int = 8  # worst and best captioned samples per dataset in the gallery (lavis/common/gallery.py)
    compile: bool = False  # torch.compile each transformer block / Q-Former layer (lavis/common/compile.py)


@dataclass
class ResolvedConfig:
    """The validated config: typed objects for the code, the merged YAML for saving and printing."""

    run: RunConfig
    model_arch: str
    model: Any
    datasets: dict[str, Any]  # name -> builder Config instance
    yaml: DictConfig
    cfg_path: str = "<config>"
    layers: list[Layer] = field(default_factory=list)  # every source, lowest first (default YAMLs, bases, --options)

    def builder_of(self, name: str):
        return DATASET_BUILDERS.get(self.datasets[name].builder or name)

    def source_of(self, key: str) -> str:
        """Where the dotted `key` was set (`--options key=value`, a run or default YAML); unset: the run YAML."""
        return _source_of(key, self.layers, self.cfg_path)


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


def _pick(key: str, layers: list[Layer], default_source: str) -> tuple[Any, str]:
    """(value, where it was set) of the dotted `key`: the highest layer that sets it; (None, default_source) if none."""
    for source, layer in reversed(layers):
        value = OmegaConf.select(layer, key, default=None)
        if value is not None:
            return value, source
    return None, default_source


def _source_of(key: str, layers: list[Layer], default_source: str) -> str:
    return _pick(key, layers, default_source)[1]


def _is_option(source: str) -> bool:
    return source.startswith(OPTIONS)


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
        if key == BASE_KEY and _is_option(source):
            raise ConfigError(f"{source}: 'base' is a key of a run YAML (the file it extends), not an override")
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown top-level key '{key}'.{hint} A run YAML has: model, datasets, run "
                              "(and optionally base: the YAML it extends)")


def _file_layers(cfg_path: str) -> list[Layer]:
    """The run YAML and the chain of `base:` files it extends, lowest (the last base) first. A relative base is
    relative to the folder of the YAML naming it; a file met twice is a cycle."""
    layers: list[Layer] = []
    chain: list[Path] = []
    path, named_by = Path(cfg_path), None
    while True:
        resolved = path.resolve()
        if resolved in chain:
            cycle = " -> ".join(map(str, [*chain[chain.index(resolved):], resolved]))
            raise ConfigError(f"{named_by}: 'base' makes a cycle: {cycle}; a YAML cannot extend itself", key=BASE_KEY)
        chain.append(resolved)
        if named_by is not None and not path.is_file():
            raise ConfigError(f"{named_by}: bad value for 'base': {path} does not exist (a relative base is relative "
                              "to the folder of the YAML naming it)", key=BASE_KEY)
        cfg = _load_yaml(path, "config file")
        base = cfg.get(BASE_KEY)
        layers.append((str(path), _without(cfg, (BASE_KEY, *RECORD_KEYS))))
        if base is None:
            return layers[::-1]
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: bad value for 'base': expected the path of the run YAML this one extends, got "
                              f"{describe(base)}", key=BASE_KEY)
        path, named_by = Path(os.path.normpath(path.parent / base)), str(path)  # an absolute base stays as it is


def run_yaml_layers(cfg_path: str | Path) -> list[Layer]:
    """(source, YAML) of a run YAML and every `base:` it extends, lowest first (for tools that read one section)."""
    return _file_layers(str(cfg_path))


def _option_layers(options: list[str] | None) -> list[Layer]:
    """One layer per `--options` item, so that an error names the item as typed."""
    layers = []
    for item in options or []:
        source = f"{OPTIONS} {item}"
        try:
            layers.append((source, OmegaConf.from_dotlist([item])))
        except Exception as e:  # noqa: BLE001 - a malformed key=value, re-raised with the item
            raise ConfigError(f"{OPTIONS}: cannot parse {item!r} (expected key=value): {e}") from None
    return layers


def _failure(e: BaseException) -> str:
    """An exception in one line, with where it was raised (outside importlib's machinery)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
    where = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def _import_plugins(layers: list[Layer]) -> None:
    """Import the modules of run.imports of every layer (each layer's list is imported)."""
    for source, layer in layers:
        names = _section(layer, "run", source).get("imports")
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
            except Exception as e:  # noqa: BLE001 - a missing module, or one that fails while importing
                # one message with the original error; the traceback stays reachable (`original`, --debug)
                raise ConfigError(f"{source}: {key}: cannot import '{name}': {_failure(e)}", key=key,
                                  original=e) from None


def _resolve_model(layers: list[Layer], cfg_path: str) -> tuple[str, str | None, DictConfig, list[Layer]]:
    """(arch, model_type, merged model section, the model default YAML as a layer)."""
    sections = [(source, _section(layer, "model", source)) for source, layer in layers]
    arch, source = _pick("arch", sections, cfg_path)
    if arch is None or arch == "":
        raise ConfigError(f"{cfg_path}: model.arch is not set; registered models: {', '.join(MODELS.names())}")
    cls = _registered(MODELS, arch, "model.arch", source)
    model_type, source = _pick("model_type", sections, cfg_path)
    sources: list[tuple[str, Any]] = []
    default_layers: list[Layer] = []
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
        default_layers.append((str(default_path), OmegaConf.create({"model": default})))
    sources += [(source, _without(section, ("arch", "model_type"))) for source, section in sections]
    merged = merge_checked(OmegaConf.structured(cls.Config), sources, prefix="model")
    return arch, model_type, merged, default_layers


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    data = OmegaConf.to_container(cfg, resolve=False)
    return OmegaConf.create({k: v for k, v in data.items() if k not in keys})


def _dataset_layers(layers: list[Layer], cfg_path: str) -> tuple[dict[str, int], dict[str, str]]:
    """({dataset: index of the layer from which its entry counts}, {removed dataset: the source removing it}).
    `datasets.<name>: null` removes a dataset a lower layer defined; --options cannot invent one."""
    start: dict[str, int] = {}
    removed: dict[str, str] = {}
    for i, (source, layer) in enumerate(layers):
        sets = _section(layer, "datasets", source)
        for name in map(str, sets.keys()):
            if sets.get(name) is not None:
                if _is_option(source) and name not in start:
                    raise ConfigError(f"{source}: dataset '{name}' is not in {cfg_path}; its datasets: "
                                      f"{list(start)}", key=f"datasets.{name}")
                start.setdefault(name, i)
                removed.pop(name, None)
            elif name in start:
                del start[name]
                removed[name] = source
            else:
                raise ConfigError(f"{source}: 'datasets.{name}: null' removes nothing: no dataset '{name}' is "
                                  f"defined below it (datasets: {list(start) or 'none'})", key=f"datasets.{name}")
    return start, removed


def _resolve_datasets(layers: list[Layer], cfg_path: str) -> tuple[dict[str, DictConfig], list[Layer]]:
    """(name -> merged dataset section, the builders' default YAMLs as layers)."""
    start, removed = _dataset_layers(layers, cfg_path)
    resolved, default_layers = {}, []
    for name, first in start.items():
        key = f"datasets.{name}"
        entries = [(source, _mapping(_section(layer, "datasets", source).get(name), key, source))
                   for source, layer in layers[first:] if name in _section(layer, "datasets", source)]
        builder_name, source = _pick("builder", entries, layers[first][0])
        if builder_name is None or builder_name == "":  # unset: the entry's name is the builder's name
            builder = _registered(DATASET_BUILDERS, name, f"{key}.builder", layers[first][0],
                                  note=" (not set, so the entry's name is used)")
        else:
            builder = _registered(DATASET_BUILDERS, builder_name, f"{key}.builder", source)
        sources: list[tuple[str, Any]] = []
        if getattr(builder, "DEFAULT_CONFIG", None):
            default_path = CONFIG_ROOT / builder.DEFAULT_CONFIG
            default = _load_yaml(default_path, "dataset default config")
            sources.append((str(default_path), default))
            default_layers.append((str(default_path), OmegaConf.create({"datasets": {name: default}})))
        sources += entries
        resolved[name] = merge_checked(OmegaConf.structured(builder.Config), sources, prefix=key)
    if not resolved:
        gone = f" (removed: {', '.join(f'{n} by {s}' for n, s in removed.items())})" if removed else ""
        raise ConfigError(f"{cfg_path}: no datasets given under 'datasets:'{gone}")
    return resolved, default_layers


def _removed_sections(layers: list[Layer], key: str) -> dict[str, str]:
    """{name: the last source setting `<key>.<name>: null`}: the sections of the map `key` a layer removed."""
    removed = {}
    for source, layer in layers:
        node = OmegaConf.select(layer, key, default=None)
        if isinstance(node, DictConfig):
            removed.update({str(name): source for name in node.keys() if node.get(name) is None})
    return removed


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


def is_path_key(key: str) -> bool:
    """Whether a (dotted) key names a file or folder: path, *_path, *_root, *_file."""
    name = key.rsplit(".", 1)[-1]
    return name == "path" or name.endswith(("_path", "_root", "_file"))


def path_fields(obj: Any, prefix: str) -> list[tuple[str, str]]:
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
        if isinstance(value, str) and value and is_path_key(key):
            found.append((key, value))
        else:
            found.extend(path_fields(value, key))
    return found


# Fields naming pretrained weights; with `model.random_init: true` they are neither read nor required to exist.
WEIGHT_PATH_SUFFIXES = ("checkpoint_path", "init_path")


def is_weight_path(key: str) -> bool:
    return key.endswith(WEIGHT_PATH_SUFFIXES)


def check_model_paths(model_cfg: Any, source_of: Callable[[str], str]) -> None:
    """Every set model path exists (weight paths only unless `random_init`); each missing one is named with the
    source that set it."""
    fields_ = path_fields(model_cfg, "model")
    if getattr(model_cfg, "random_init", False):
        fields_ = [(key, value) for key, value in fields_ if not is_weight_path(key)]
    errors = [(key, f"{source_of(key)}: {key} = {value} does not exist") for key, value in fields_
              if not Path(value).exists()]
    if errors:
        raise ConfigError("\n".join(line for _, line in errors) + "\nFix the path where it is set (the YAML file, or "
                          "--options key=value)", key=errors[0][0])


def load_config(cfg_path: str, options: list[str] | None = None) -> ResolvedConfig:
    layers = _file_layers(cfg_path) + _option_layers(options)
    for source, layer in layers:
        _check_top_level(layer, source)
    _import_plugins(layers)

    run = merge_checked(OmegaConf.structured(RunConfig), [(s, _section(layer, "run", s)) for s, layer in layers],
                        prefix="run")
    arch, model_type, model, model_defaults = _resolve_model(layers, cfg_path)
    datasets, dataset_defaults = _resolve_datasets(layers, cfg_path)
    defaults_hint = _unmerged_defaults_hint(arch, model_type)
    all_layers = [*model_defaults, *dataset_defaults, *layers]

    def source_of(key: str) -> str:
        return _source_of(key, all_layers, cfg_path)

    _missing_required(run, "run", cfg_path)
    _missing_required(model, "model", cfg_path, defaults_hint)
    for name, node in datasets.items():
        _missing_required(node, f"datasets.{name}", cfg_path)

    run_obj: RunConfig = OmegaConf.to_object(run)
    for key, registry in (("run.task", TASKS), ("run.runner", RUNNERS), ("run.lr_schedule.name", LR_SCHEDULES)):
        _registered(registry, OmegaConf.select(run, key[len("run."):]), key, source_of(key))
    model_obj = OmegaConf.to_object(model)
    dataset_objs = {name: OmegaConf.to_object(node) for name, node in datasets.items()}

    modalities = getattr(model_obj, "modalities", None)
    if modalities is not None:
        _check_dataset_modalities(dataset_objs, modalities, _removed_sections(layers, "model.modalities"), source_of,
                                  defaults_hint)
    for name, ds in dataset_objs.items():
        if modalities is not None and hasattr(ds, "region_kind"):
            _resolve_region_kind(name, ds, modalities, source_of(f"datasets.{name}.region_kind"))
            datasets[name].region_kind = ds.region_kind  # the saved config says which kind was used
    with_source(MODELS.get(arch).check_config, source_of)(model_obj)  # cross-references, before any weight
    check_model_paths(model_obj, source_of)

    yaml = OmegaConf.create({
        "model": {"arch": arch, "model_type": model_type, **OmegaConf.to_container(model, enum_to_str=True)},
        "datasets": {name: OmegaConf.to_container(node, enum_to_str=True) for name, node in datasets.items()},
        "run": OmegaConf.to_container(run, enum_to_str=True),
    })
    return ResolvedConfig(run=run_obj, model_arch=arch, model=model_obj, datasets=dataset_objs, yaml=yaml,
                          cfg_path=cfg_path, layers=all_layers)


def with_source(check: Callable[..., Any], source_of: Callable[[str], str]) -> Callable[..., Any]:
    """`check` with each ConfigError that names its key (`ConfigError.key`) prefixed by that key's source."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except ConfigError as e:
            if e.key is None:
                raise
            raise ConfigError(f"{source_of(e.key)}: {e}", key=e.key, original=e.original) from None

    return checked


def _check_dataset_modalities(datasets: dict[str, Any], modalities: Any, removed: dict[str, str],
                              source_of: Callable[[str], str], defaults_hint: str) -> None:
    for name, ds in datasets.items():
        if ds.modality in modalities:
            continue
        key = f"datasets.{name}.modality"
        if ds.modality in removed:
            raise ConfigError(
                f"{source_of(key)}: {key} is '{ds.modality}', a modality removed by {removed[ds.modality]} "
                f"(model.modalities.{ds.modality}: null). Remove the dataset as well (datasets.{name}: null) or "
                f"point it at one of: {', '.join(modalities)}", key=key)
        raise ConfigError(f"{source_of(key)}: {key} '{ds.modality}' is not a key of model.modalities "
                          f"({', '.join(modalities)}){defaults_hint}", key=key)


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
    """Every builder's `check_paths()`; each problem is named with the source of the key it starts with."""
    problems = []
    for name, builder in builders.items():
        for message in builder.check_paths():
            field_name = re.match(r"[A-Za-z_][\w.]*", message)
            key = f"datasets.{name}.{field_name.group(0)}" if field_name else f"datasets.{name}"
            problems.append(f"{cfg.source_of(key) if cfg.layers else cfg_path}: datasets.{name}: {message}")
    if problems:
        raise ConfigError("\n".join(problems) + "\nFix the dataset path where it is set (the YAML file, or --options "
                          "key=value)")


def save_config(cfg: ResolvedConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg.yaml))


def config_from_command_line(description: str, argv: list[str] | None = None) -> tuple[ResolvedConfig, str]:
    """`--cfg-path X [--options key=value ...] [--debug]`, as train.py and evaluate.py take them: (config, its
    path). `--debug` is read by `report_config_errors`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="run YAML with model, datasets and run sections")
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. run.max_epoch=2 datasets.refcoco.batch_size=8 (repeatable: a "
                             "launch script's own --options and yours add up)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return load_config(args.cfg_path, args.options), args.cfg_path


DEBUG_ENV = "LAVIS_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a configuration error (or set {DEBUG_ENV}=1)")


def report_config_errors(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> Any:
    """Run a command-line `main(argv)`; a ConfigError is printed as one message on stderr (rank 0 only under
    torchrun: every rank meets the same error) and every rank exits with status 2. With `--debug` or LAVIS_DEBUG=1
    the traceback is printed too (of the original error as well, for a failing run.imports module)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":
            if "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                for error in (e.original, e):
                    if error is not None:
                        traceback.print_exception(error, file=sys.stderr)
            print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)

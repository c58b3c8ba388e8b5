"""The feature cache (lavis/datasets/feature_cache.py) in a run: which frozen encoder serves a dataset's modality,
building the frozen encoders alone (as RegionBLIP builds them), filling the cache (tools/precompute_features.py),
and attaching it to the builders of a training or evaluation run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from lavis.common import dist as dist_utils
from lavis.common.checkpoint_io import read_state_dict
from lavis.common.config import ResolvedConfig, check_dataset_paths, is_weight_path
from lavis.common.registry import ENCODERS
from lavis.datasets.base import SkippedSample
from lavis.datasets.feature_cache import (
    EncoderSpec,
    FeatureCachedBuilder,
    FeatureCacheError,
    ShardWriter,
    cache_components,
    cache_folder,
    deterministic_processor,
    is_complete,
    start_folder,
    weights_fingerprint,
)
from lavis.datasets.loaders import SeededItems
from lavis.runners.setup import autocast, autocast_dtype

log = logging.getLogger("lavis.features")


def precision_of(device: torch.device, amp: str) -> str:
    """The numerics the encoder runs under, part of the cache key: device type and autocast dtype."""
    dtype = autocast_dtype(device, amp)
    return f"{device.type}:{str(dtype).removeprefix('torch.') if dtype is not None else 'float32'}"


def modality_encoder(model_cfg: Any, modality: str) -> str:
    """The key (in model.encoders) of the frozen encoder a modality reads."""
    encoders, modalities = getattr(model_cfg, "encoders", None), getattr(model_cfg, "modalities", None)
    if encoders is None or modalities is None:
        raise FeatureCacheError(f"{type(model_cfg).__name__} has no `encoders` / `modalities`; the feature cache "
                                "serves models configured like RegionBLIP")
    return modalities[modality].encoder


def encoder_spec(model_cfg: Any, key: str, module: nn.Module) -> EncoderSpec:
    if any(p.requires_grad for p in module.parameters()):
        raise FeatureCacheError(f"model.encoders.{key} is trainable; only a frozen encoder's outputs can be cached")
    entry = model_cfg.encoders[key]
    params = dict(entry.params)
    files: list[str] = []
    if not model_cfg.random_init:
        files += [str(v) for k, v in params.items() if is_weight_path(k) and v]
        if entry.init_from_blip2 and model_cfg.blip2_checkpoint_path:
            files.append(model_cfg.blip2_checkpoint_path)
    config = {"name": entry.name, "params": params, "init_from_blip2": entry.init_from_blip2,
              "random_init": model_cfg.random_init}
    return EncoderSpec(key, entry.input_key, config, tuple(files), weights_fingerprint(module))


def build_frozen_encoders(model_cfg: Any) -> nn.ModuleDict:
    """The frozen encoders alone, built and loaded as RegionBLIP builds them (first, in config order: at the same
    seed `random_init` gives the same weights; the cache key's weight fingerprint checks it either way)."""
    from lavis.models.regionblip.config import validate, without_weights

    encoder_cfgs = validate(model_cfg)
    if model_cfg.random_init:
        model_cfg, encoder_cfgs = without_weights(model_cfg), without_weights(encoder_cfgs)
    encoders = nn.ModuleDict({key: ENCODERS.get(entry.name).from_config(encoder_cfgs[key])
                              for key, entry in model_cfg.encoders.items()})
    from_blip2 = [key for key, entry in model_cfg.encoders.items() if entry.init_from_blip2]
    if from_blip2 and model_cfg.blip2_checkpoint_path:
        state = read_state_dict(model_cfg.blip2_checkpoint_path)
        for key in from_blip2:
            encoders[key].load_pretrained(state, f"{model_cfg.blip2_checkpoint_path} -> encoders.{key}")
    return encoders.requires_grad_(False).eval()


def attach_feature_caches(cfg: ResolvedConfig, builders: dict[str, Any], model: nn.Module,
                          device: torch.device) -> dict[str, Any]:
    """The builders, those of datasets with `feature_cache_dir` wrapped to read their encoder's cached outputs."""
    out = dict(builders)
    for name, builder in builders.items():
        ds = cfg.datasets[name]
        if not getattr(ds, "feature_cache_dir", None):  # a plugin's dataset config need not have the field
            continue
        key = modality_encoder(cfg.model, ds.modality)
        spec = encoder_spec(cfg.model, key, model.encoders[key])
        out[name] = FeatureCachedBuilder(builder, name, spec, ds.feature_cache_dtype,
                                         precision_of(device, cfg.run.amp.value))
    return out


# ---- filling the cache --------------------------------------------------------------------------------------
def _cached_splits(ds_cfg: Any, wanted: list[str] | None) -> list[str]:
    used = [s for s in dict.fromkeys((ds_cfg.train_split, ds_cfg.eval_split)) if s]
    return [s for s in used if wanted is None or s in wanted]


def _batches(dataset, name: str, input_key: str, batch_size: int, rank: int, world: int,
             num_workers: int) -> Iterator[tuple[list[str], torch.Tensor, int]]:
    """(sample ids, stacked inputs, number of bad samples) of this rank's share: a contiguous slice of a map-style
    dataset, or what a streaming dataset yields on this rank (such datasets shard by rank themselves)."""
    def collate(items):
        good = [it for it in items if not isinstance(it, SkippedSample)]
        ids = [str(it["sample_id"]) for it in good]
        inputs = torch.stack([it[input_key] for it in good]) if good else None
        return ids, inputs, len(items) - len(good)

    if isinstance(dataset, IterableDataset):
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    else:
        start, stop = len(dataset) * rank // world, len(dataset) * (rank + 1) // world
        keys = [(i, 0) for i in range(start, stop)]  # deterministic processors: the seed is irrelevant
        loader = DataLoader(SeededItems(dataset, name), batch_size=batch_size, sampler=keys,
                            num_workers=num_workers, collate_fn=collate)
    yield from loader


def precompute_features(cfg: ResolvedConfig, cfg_path: str, datasets: list[str] | None = None,
                        splits: list[str] | None = None, batch_size: int | None = None,
                        force: bool = False) -> list[Path]:
    """Fill the feature cache of every dataset with `feature_cache_dir` (or those named); returns the folders.
    Under torchrun every rank encodes its share and writes its own shard."""
    info = dist_utils.init_distributed(cfg.run.device.value, cfg.run.dist_timeout_s)
    names = datasets or [n for n, ds in cfg.datasets.items() if ds.feature_cache_dir]
    for name in names:
        if name not in cfg.datasets:
            raise FeatureCacheError(f"--datasets: '{name}' is not in {cfg_path} ({list(cfg.datasets)})")
        if not cfg.datasets[name].feature_cache_dir:
            raise FeatureCacheError(f"datasets.{name}.feature_cache_dir is not set; set it in the YAML or --options")
    if not names:
        raise FeatureCacheError(f"{cfg_path}: no dataset sets feature_cache_dir; nothing to precompute")
    builders = {name: cfg.builder_of(name)(cfg.datasets[name]) for name in names}
    check_dataset_paths(cfg, builders, cfg_path)

    torch.manual_seed(cfg.run.seed)  # as set_up_run does before building the model
    encoders = build_frozen_encoders(cfg.model)
    specs = {key: encoder_spec(cfg.model, key, module) for key, module in encoders.items()}
    encoders.to(info.device)
    amp_dtype = autocast_dtype(info.device, cfg.run.amp.value)
    precision = precision_of(info.device, cfg.run.amp.value)

    folders = []
    for name in names:
        ds_cfg, builder = cfg.datasets[name], builders[name]
        key = modality_encoder(cfg.model, ds_cfg.modality)
        for split in _cached_splits(ds_cfg, splits):
            processor_key, processor_cfg = deterministic_processor(builder, name, split)
            components = cache_components(specs[key], processor_key, processor_cfg, ds_cfg.feature_cache_dtype,
                                          precision)
            folder = cache_folder(ds_cfg.feature_cache_dir, name, split, components)
            folders.append(folder)
            if is_complete(folder) and not force:
                log.info("datasets.%s/%s: feature cache %s is up to date", name, split, folder)
                continue
            if info.is_main:
                start_folder(folder, components, info.world_size)
            dist_utils.barrier()
            _fill(builder.build(split), name, split, folder, encoders[key], specs[key].input_key, ds_cfg,
                  batch_size or ds_cfg.batch_size, info, amp_dtype, cfg.run.num_workers)
            dist_utils.barrier()
    return folders


def _fill(dataset, name: str, split: str, folder: Path, encoder: nn.Module, input_key: str, ds_cfg: Any,
          batch_size: int, info: dist_utils.DistInfo, amp_dtype, num_workers: int) -> None:
    share = len(dataset) if isinstance(dataset, IterableDataset) else -(-len(dataset) // info.world_size)
    writer = ShardWriter(folder, info.rank, info.world_size, ds_cfg.feature_cache_dtype, capacity=share)

    @torch.no_grad()
    def encode(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(amp_dtype):
            return encoder(inputs.to(info.device, non_blocking=True))

    bad = rows = 0
    bar = tqdm(total=share, desc=f"{name}/{split}", disable=not info.is_main, dynamic_ncols=True)
    for ids, inputs, skipped in _batches(dataset, name, input_key, batch_size, info.rank, info.world_size,
                                         num_workers):
        bad += skipped
        keep = [i for i, sid in enumerate(ids) if not writer.has(sid)]  # a stream may repeat samples
        if keep:
            rows += writer.add([ids[i] for i in keep], inputs[keep], encode)
        bar.update(len(ids) + skipped)
    bar.close()
    writer.close()
    log.info("datasets.%s/%s rank %d: %d samples -> %d distinct rows in %s (%d bad samples skipped)", name, split,
             info.rank, len(writer.index), rows, folder, bad)

"""Frozen-encoder feature cache: a frozen encoder's output for each sample, computed once, read back every epoch.

Where it applies: the encoder is frozen and the processor that makes its input is deterministic (evaluation
processors; training processors with every random augmentation off). A dataset entry with `feature_cache_dir` set
then yields `encoder_tokens` [N, C] instead of `image` / `points`, and the model skips its encoder. A processor
with augmentation on is refused (`deterministic_processor`): a cache would freeze one random draw of it.

On disk, one folder per (dataset, split, key):
    {feature_cache_dir}/{dataset}/{split}/{encoder}-{digest}/
        meta.json                       what the digest was computed from, the number of writer ranks
        shard-{r:05d}-of-{w:05d}.bin    raw [rows, N, C] array (numpy memmap), written by rank r
        shard-{r:05d}-of-{w:05d}.json   written last (its presence marks the shard complete): sample id -> row,
                                        a fingerprint of each row's encoder input, shape and dtype
The digest hashes the encoder's config (registered name, params, its weight files' path / size / mtime), a
fingerprint of its actual weights, the processor config, the storage dtype and the device type / autocast dtype the
features were computed under: change any and the folder changes, so stale features are never read (they are
recomputed by tools/precompute_features.py into the new folder). Rows are deduplicated by input fingerprint (the
five COCO captions of one image share one row), and every read checks that the sample's processed input still has
the fingerprint it had when its row was written, so a changed data file is an error, not a silent mismatch.
The processor still runs when reading (to check that fingerprint); the encoder is what is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# storage dtype -> (numpy dtype on disk, torch dtype of the values); bfloat16 is stored as its raw 16 bits
STORAGE_DTYPES = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.uint16, torch.bfloat16),
}
PRECOMPUTE_HINT = "python tools/precompute_features.py --cfg-path <your run YAML> [--options ...]"


class FeatureCacheError(RuntimeError):
    pass


# ---- what a cache folder is keyed by ---------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSpec:
    """A frozen encoder as the cache key sees it."""

    key: str  # its name in the model config, e.g. vision
    input_key: str  # the item key it reads, e.g. image or points
    config: dict  # JSON-able: registered name, params
    weight_files: tuple[str, ...]  # files its weights were read from
    weights_fingerprint: str  # `weights_fingerprint` of the built module


def weights_fingerprint(module: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """A hash of every parameter and buffer's name, shape, dtype and up to `samples_per_tensor` evenly spaced
    values: cheap for a 1B-parameter ViT, and different for any other checkpoint or random initialisation."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        picked = flat[::step][:samples_per_tensor].to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()


def _file_stamp(path: str) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _plain(obj: Any) -> Any:
    return asdict(obj) if is_dataclass(obj) else obj


def cache_components(spec: EncoderSpec, processor_key: str, processor_cfg: Any, dtype: str,
                     precision: str) -> dict:
    """Everything the cached features depend on, as JSON-able data (the digest hashes it; meta.json keeps it)."""
    if dtype not in STORAGE_DTYPES:
        raise FeatureCacheError(f"feature_cache_dtype must be one of {sorted(STORAGE_DTYPES)}, not '{dtype}'")
    return {
        "format": FORMAT_VERSION,
        "encoder": {"key": spec.key, "input_key": spec.input_key, "config": spec.config,
                    "weight_files": [_file_stamp(p) for p in spec.weight_files],
                    "weights_fingerprint": spec.weights_fingerprint},
        "processor": {"key": processor_key, "type": type(processor_cfg).__name__, "config": _plain(processor_cfg)},
        "dtype": dtype,
        "precision": precision,
    }


def cache_folder(root: str | Path, dataset: str, split: str, components: dict) -> Path:
    text = json.dumps(components, sort_keys=True, default=str)
    digest = hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
    return Path(root) / dataset / split / f"{components['encoder']['key']}-{digest}"


def deterministic_processor(builder: Any, dataset: str, split: str) -> tuple[str, Any]:
    """(YAML key, config) of the processor making `split`'s encoder input; refuses one with random augmentation."""
    declare = getattr(builder, "input_processor_config", None)
    if declare is None:
        raise FeatureCacheError(
            f"datasets.{dataset}: builder {type(builder).__name__} does not declare the processor of its encoder "
            "input (input_processor_config(split)), so the feature cache cannot check that it is deterministic; "
            "unset feature_cache_dir"
        )
    key, cfg = declare(split)
    offending = cfg.random_settings()
    if offending:
        settings = ", ".join(f"datasets.{dataset}.{key}.{s}" for s in offending)
        raise FeatureCacheError(
            f"datasets.{dataset}: feature_cache_dir is set, but split '{split}' uses random augmentation ({settings}); "
            "cached features would freeze one random draw of it. Turn those settings off, or unset "
            f"datasets.{dataset}.feature_cache_dir"
        )
    return key, cfg


def input_fingerprint(inputs: torch.Tensor) -> str:
    data = inputs.detach().to("cpu").contiguous()
    h = hashlib.blake2b(f"{tuple(data.shape)}|{data.dtype}|".encode(), digest_size=16)
    h.update(data.view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16 else data.numpy().tobytes())
    return h.hexdigest()


# ---- writing ------------------------------------------------------------------------------------------------
def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def start_folder(folder: Path, components: dict, world_size: int) -> None:
    """Clear `folder` (an unfinished or forced rebuild) and write its meta.json; rank 0 only."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _write_json_atomic(folder / "meta.json", {"components": components, "world_size": world_size})


def is_complete(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    world = json.loads(meta.read_text())["world_size"]
    return all((folder / f"{shard_name(r, world)}.json").is_file() for r in range(world))


class ShardWriter:
    """One rank's shard: rows appended in order, deduplicated by input fingerprint; `close()` commits it."""

    def __init__(self, folder: Path, rank: int, world_size: int, dtype: str, capacity: int):
        self.base = Path(folder) / shard_name(rank, world_size)
        self.np_dtype, self.torch_dtype = STORAGE_DTYPES[dtype]
        self.dtype, self.capacity = dtype, max(1, capacity)
        self.index: dict[str, int] = {}
        self.row_of_input: dict[str, int] = {}
        self.fingerprints: list[str] = []
        self.array: Optional[np.memmap] = None

    def has(self, sample_id: str) -> bool:
        return sample_id in self.index

    def add(self, sample_ids: list[str], inputs: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> int:
        """Encode the inputs not seen before (one call of `encode`), map every sample id to its row; returns the
        number of rows written."""
        prints = [input_fingerprint(x) for x in inputs]
        fresh: dict[str, int] = {}
        for position, fp in enumerate(prints):
            if fp not in self.row_of_input and fp not in fresh:
                fresh[fp] = position
        if fresh:
            outputs = encode(inputs[list(fresh.values())])
            self._append(list(fresh), outputs)
        for sample_id, fp in zip(sample_ids, prints):
            self.index[str(sample_id)] = self.row_of_input[fp]
        return len(fresh)

    def add_rows(self, sample_ids: list[str], outputs: torch.Tensor) -> None:
        """Store given rows (no input to fingerprint: synthetic features, e.g. for benchmarks)."""
        prints = [f"row:{sid}" for sid in sample_ids]
        self._append(prints, outputs)
        for sample_id, fp in zip(sample_ids, prints):
            self.index[str(sample_id)] = self.row_of_input[fp]

    def _append(self, prints: list[str], outputs: torch.Tensor) -> None:
        values = outputs.detach().to("cpu", self.torch_dtype).contiguous()
        rows = values.view(torch.int16).numpy().view(np.uint16) if self.dtype == "bfloat16" else values.numpy()
        start = len(self.fingerprints)
        if self.array is None:
            self.array = np.memmap(self._bin, dtype=self.np_dtype, mode="w+", shape=(self.capacity, *rows.shape[1:]))
        if start + len(rows) > self.array.shape[0]:  # more distinct inputs than planned: grow the file
            grown = max(2 * self.array.shape[0], start + len(rows))
            self.array.flush()
            del self.array
            self.array = np.memmap(self._bin, dtype=self.np_dtype, mode="r+", shape=(grown, *rows.shape[1:]))
        self.array[start:start + len(rows)] = rows
        for offset, fp in enumerate(prints):
            self.row_of_input[fp] = start + offset
        self.fingerprints.extend(prints)

    @property
    def _bin(self) -> Path:
        return self.base.with_suffix(".bin")

    def close(self) -> None:
        rows = len(self.fingerprints)
        shape: list[int] = []
        if self.array is not None:
            shape = list(self.array.shape[1:])
            row_bytes = int(np.prod(shape)) * np.dtype(self.np_dtype).itemsize
            self.array.flush()
            del self.array
            self.array = None
            os.truncate(self._bin, rows * row_bytes)
        _write_json_atomic(self.base.with_suffix(".json"), {
            "rows": rows, "row_shape": shape, "dtype": self.dtype, "index": self.index,
            "fingerprints": self.fingerprints,
        })


# ---- reading ------------------------------------------------------------------------------------------------
class FeatureStore:
    """Read side of one cache folder: sample id -> float32 tensor [N, C] from memory-mapped shards. The maps are
    opened lazily in each process (a loader worker maps the files itself; nothing large is pickled)."""

    def __init__(self, folder: str | Path, dataset: str = "?"):
        self.folder, self.dataset = Path(folder), dataset
        if not is_complete(self.folder):
            raise FeatureCacheError(
                f"datasets.{dataset}: the feature cache {self.folder} is missing or incomplete (the encoder, its "
                f"weights, the processor or the dtype changed, or it was never filled); fill it with {PRECOMPUTE_HINT}"
            )
        meta = json.loads((self.folder / "meta.json").read_text())
        self.components = meta["components"]
        self.shards: list[dict] = []
        self.location: dict[str, tuple[int, int]] = {}
        for r in range(meta["world_size"]):
            shard = json.loads((self.folder / f"{shard_name(r, meta['world_size'])}.json").read_text())
            shard["bin"] = str(self.folder / f"{shard_name(r, meta['world_size'])}.bin")
            for sample_id, row in shard.pop("index").items():
                self.location.setdefault(sample_id, (r, row))
            self.shards.append(shard)
        self._maps: dict[int, np.memmap] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def __len__(self) -> int:
        return len(self.location)

    def __contains__(self, sample_id: str) -> bool:
        return str(sample_id) in self.location

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            info = self.shards[shard]
            np_dtype = STORAGE_DTYPES[info["dtype"]][0]
            self._maps[shard] = np.memmap(info["bin"], dtype=np_dtype, mode="r",
                                          shape=(info["rows"], *info["row_shape"]))
        return self._maps[shard]

    def lookup(self, sample_id: str) -> tuple[torch.Tensor, str]:
        """(features [N, C] float32, fingerprint of the input they were computed from)."""
        if str(sample_id) not in self.location:
            raise FeatureCacheError(
                f"datasets.{self.dataset}: sample {sample_id} is not in the feature cache {self.folder}; the dataset "
                f"changed since it was filled: refill it with {PRECOMPUTE_HINT} --force"
            )
        shard, row = self.location[str(sample_id)]
        info = self.shards[shard]
        values = torch.from_numpy(np.array(self._map(shard)[row]))
        if info["dtype"] == "bfloat16":
            values = values.view(torch.int16).view(torch.bfloat16)
        return values.float(), info["fingerprints"][row]


def replace_input(item: dict, store: FeatureStore, input_key: str) -> dict:
    """The item with its encoder input replaced by the cached `encoder_tokens`, after checking the input is the
    one the row was computed from."""
    inputs = item.pop(input_key)
    tokens, stored = store.lookup(item["sample_id"])
    if stored != input_fingerprint(inputs) and not stored.startswith("row:"):
        raise FeatureCacheError(
            f"datasets.{store.dataset}: sample {item['sample_id']}'s {input_key} differs from the one its cached "
            f"features in {store.folder} were computed from (the data changed); refill with {PRECOMPUTE_HINT} --force"
        )
    item["encoder_tokens"] = tokens
    return item


class CachedInputs(Dataset):
    """A map-style dataset whose items carry `encoder_tokens` from the cache instead of the encoder input."""

    def __init__(self, dataset: Dataset, store: FeatureStore, input_key: str):
        self.dataset, self.store, self.input_key = dataset, store, input_key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return replace_input(self.dataset[index], self.store, self.input_key)

    def __getattr__(self, name: str) -> Any:  # ground_truth(), skipped, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class CachedInputStream(IterableDataset):
    """The streaming twin of `CachedInputs`."""

    def __init__(self, dataset: IterableDataset, store: FeatureStore, input_key: str):
        self.dataset, self.store, self.input_key = dataset, store, input_key

    def __iter__(self) -> Iterator[dict]:
        for item in self.dataset:
            yield replace_input(item, self.store, self.input_key)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # set_epoch(), ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def with_cached_inputs(dataset: Dataset, store: FeatureStore, input_key: str) -> Dataset:
    if isinstance(dataset, IterableDataset):
        return CachedInputStream(dataset, store, input_key)
    return CachedInputs(dataset, store, input_key)


class FeatureCachedBuilder:
    """Wraps a dataset builder: `build(split)` returns the dataset reading its encoder's output from the cache.
    Everything else is the wrapped builder's."""

    def __init__(self, builder: Any, dataset: str, spec: EncoderSpec, dtype: str, precision: str):
        self.builder, self.dataset, self.spec = builder, dataset, spec
        self.dtype, self.precision = dtype, precision

    def folder(self, split: str) -> Path:
        key, cfg = deterministic_processor(self.builder, self.dataset, split)
        components = cache_components(self.spec, key, cfg, self.dtype, self.precision)
        return cache_folder(self.builder.cfg.feature_cache_dir, self.dataset, split, components)

    def build(self, split: str) -> Dataset:
        store = FeatureStore(self.folder(split), self.dataset)
        log.info("datasets.%s/%s: encoder %s outputs from the feature cache %s (%d samples)", self.dataset, split,
                 self.spec.key, store.folder, len(store))
        return with_cached_inputs(self.builder.build(split), store, self.spec.input_key)

    def __getattr__(self, name: str) -> Any:
        if name == "builder":
            raise AttributeError(name)
        return getattr(self.builder, name)

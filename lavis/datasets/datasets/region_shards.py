"""Region-caption data at scale in webdataset shards: write them, and read them one (box, caption) at a time.

On disk, a folder holds `regions-000000.tar`, ... and `index.json`. Each tar sample is one image:
    {key}.jpg   the encoded image
    {key}.json  {"boxes": [[x, y, w, h] pixels, ...], "captions": [str, ...], "image_id": ...}
`captions[i]` describes `boxes[i]`. `index.json` holds, per shard, its file, images, regions and offsets file
(`regions-000000.offsets.npy`: where each image's members lie in the tar), and the totals, so an epoch's length is
known without opening a tar.

Two readers. `RegionShardMapDataset` seeks to one region's bytes: map-style, so the runner's sampler gives it an
exact, resumable order. `RegionShardDataset` streams whole tars (object stores, slow seeks): it splits the
epoch-shuffled shard list by rank, then by loader worker, with webdataset's splitters. Every rank yields exactly
ceil(regions / world size) items (cycling its shards if needed), because ranks must agree on the number of steps
or a collective hangs. A seeded shuffle buffer separates the regions of one image, which would otherwise share a
batch and act as false negatives for the contrastive loss. Each yielded item seeds torch's RNG from (seed, epoch,
rank, worker, position), so augmentation is reproducible.
"""

from __future__ import annotations

import json
import math
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset
from tqdm import tqdm

from lavis.datasets.base import BadSampleError, SkippedSample, cleaned_caption
from lavis.datasets.datasets.refcoco import load_image_and_box, region_id
from lavis.datasets.loaders import derive_seed
from lavis.processors.image_processors import (
    BoxImageProcessor,
)
from lavis.processors.text_processors import CaptionProcessor

INDEX_NAME = "index.json"
INDEX_FORMAT = "region_shards/v1"
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-]")  # webdataset splits a member name at its first dot

ImageId = Union[int, str]


@dataclass
class RegionSample:
    """One image and its regions, as written to a shard."""

    key: str
    jpg: bytes
    boxes: list[list[float]]  # [x, y, w, h] pixels
    captions: list[str]
    image_id: ImageId


def write_region_shards(
    samples: Iterable[RegionSample],
    out_dir: str | Path,
    *,
    max_per_shard: int = 1000,
    prefix: str = "regions",
    total: Optional[int] = None,
    progress: bool = True,
) -> Path:
    """Write samples into tar shards of at most `max_per_shard` images plus `index.json`; returns the index path."""
    if max_per_shard < 1:
        raise ValueError(f"max_per_shard must be >= 1, not {max_per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    writer: Optional[wds.TarWriter] = None
    seen_keys: set[str] = set()
    try:
        for sample in tqdm(samples, total=total, disable=not progress, unit="image", desc=f"writing {out_dir}"):
            if len(sample.boxes) != len(sample.captions):
                raise ValueError(f"sample {sample.key}: {len(sample.boxes)} boxes but {len(sample.captions)} captions")
            key = _UNSAFE_KEY.sub("_", sample.key)
            if key in seen_keys:
                raise ValueError(f"sample key {sample.key!r} (written as {key!r}) is not unique")
            seen_keys.add(key)
            if writer is None or shards[-1]["samples"] == max_per_shard:
                if writer is not None:
                    writer.close()
                shards.append({"file": f"{prefix}-{len(shards):06d}.tar", "samples": 0, "regions": 0})
                writer = wds.TarWriter(str(out_dir / shards[-1]["file"]))
            meta = {"boxes": [list(map(float, b)) for b in sample.boxes], "captions": list(sample.captions),
                    "image_id": sample.image_id, "key": key}
            writer.write({"__key__": key, "jpg": sample.jpg, "json": meta})
            shards[-1]["samples"] += 1
            shards[-1]["regions"] += len(sample.boxes)
    finally:
        if writer is not None:
            writer.close()
    for shard in shards:
        shard["offsets"] = _write_offsets(out_dir / shard["file"])
    index = {
        "format": INDEX_FORMAT,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "regions": sum(s["regions"] for s in shards),
    }
    index_path = out_dir / INDEX_NAME
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return index_path


def _write_offsets(shard: Path) -> str:
    """Save, per image of a closed shard, where its jpg and json bytes lie, for random access; returns the file name.

    Rows: [jpg offset, jpg size, json offset, json size, regions], in the order the images were written.
    """
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    rows = []
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = member
        for parts in members.values():
            jpg, meta = parts["jpg"], parts["json"]
            regions = len(json.loads(tar.extractfile(meta).read())["boxes"])
            rows.append([jpg.offset_data, jpg.size, meta.offset_data, meta.size, regions])
    name = shard.name.replace(".tar", ".offsets.npy")
    np.save(shard.with_name(name), np.array(rows, dtype=np.int64).reshape(-1, 5))
    return name


def read_index(index_file: str | Path) -> dict[str, Any]:
    index = json.loads(Path(index_file).read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_file}: not a region shard index (format {index.get('format')!r}, "
                         f"expected {INDEX_FORMAT!r}); write shards with tools/write_region_shards.py")
    return index


@dataclass(frozen=True)
class _Region:
    sample_id: str
    jpg: bytes
    box_xywh: list[float]
    caption: str
    image_id: ImageId


class _RegionReader:
    """Turns one stored region into a dataset item (or BadSampleError); shared by the stream and the random reader."""

    image_processor: BoxImageProcessor
    text_processor: CaptionProcessor

    def _read(self, region: _Region) -> dict:
        caption = cleaned_caption(self.text_processor, region.caption, region.sample_id)
        image, box = load_image_and_box(region.jpg, region.box_xywh, self.image_processor.cfg.box_tolerance,
                                        region.sample_id)
        pixels, geometry = self.image_processor(image, box)
        return {
            "image": pixels,
            "region_geometry": geometry,
            "text_input": caption,
            "sample_id": region.sample_id,
            "image_id": region_id(region.image_id, region.box_xywh),
        }


class RegionShardMapDataset(Dataset, _RegionReader):
    """Random access to the regions of the shards (via the offsets files): a map-style dataset, one item per region.

    This is what the runner's sampler needs for its exact, resumable epoch order; it reads a few KB per item
    with a seek, so it suits local or network file systems, not object stores (use the stream there).
    """

    def __init__(self, index_file: str | Path, image_processor: BoxImageProcessor, text_processor: CaptionProcessor):
        self.index_file = Path(index_file)
        index = read_index(self.index_file)
        self.image_processor, self.text_processor = image_processor, text_processor
        self.shard_files = [str(self.index_file.parent / s["file"]) for s in index["shards"]]
        self.shard_regions = {path: int(s["regions"]) for path, s in zip(self.shard_files, index["shards"])}
        tables = [np.load(self.index_file.parent / s["offsets"]) for s in index["shards"]]
        self.shard_of_image = np.concatenate([np.full(len(t), i, dtype=np.int32) for i, t in enumerate(tables)])
        self.offsets = np.concatenate(tables) if tables else np.zeros((0, 5), dtype=np.int64)
        self.first_region = np.concatenate([[0], np.cumsum(self.offsets[:, 4])])

    def __len__(self) -> int:
        return int(self.first_region[-1])

    def __getitem__(self, index: int) -> dict:
        image = int(np.searchsorted(self.first_region, index, side="right")) - 1
        k = index - int(self.first_region[image])
        jpg_at, jpg_size, json_at, json_size, _ = (int(v) for v in self.offsets[image])
        shard = self.shard_files[self.shard_of_image[image]]
        with open(shard, "rb") as f:
            f.seek(jpg_at)
            jpg = f.read(jpg_size)
            f.seek(json_at)
            meta = json.loads(f.read(json_size))
        sample_id = f"{meta.get('key', Path(shard).stem + ':' + str(image))}/{k}"
        region = _Region(sample_id, jpg, meta["boxes"][k], meta["captions"][k], meta.get("image_id"))
        return self._read(region)


class RegionShardDataset(IterableDataset, _RegionReader):
    """Streams (box, caption) items from region shards; `len()` is the number of items this rank yields."""

    def __init__(
        self,
        index_file: str | Path,
        image_processor: BoxImageProcessor,
        text_processor: CaptionProcessor,
        *,
        name: str = "region_shards",
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
    ):
        self.index_file = Path(index_file)
        index = read_index(self.index_file)
        self.shard_files = [str(self.index_file.parent / s["file"]) for s in index["shards"]]
        self.shard_regions = {path: int(s["regions"]) for path, s in zip(self.shard_files, index["shards"])}
        self.total_regions = int(index["regions"])
        self.image_processor, self.text_processor = image_processor, text_processor
        self.name, self.seed, self.shuffle, self.shuffle_buffer = name, seed, shuffle, shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        _, world_size, _, _ = wds.utils.pytorch_worker_info()
        return math.ceil(self.total_regions / world_size)

    def __iter__(self) -> Iterator[dict | SkippedSample]:
        rank, _, worker, num_workers = wds.utils.pytorch_worker_info()
        order = list(self.shard_files)
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.name, self.epoch, "shards"))
            order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
        rank_shards = list(wds.split_by_node(order))
        mine = rank_shards[worker::num_workers]  # as wds.split_by_worker assigns them
        share = self._worker_share(rank_shards, worker, num_workers)
        if share and not mine:
            raise RuntimeError(
                f"{self.index_file}: {len(order)} shard(s) cannot feed rank {rank} worker {worker} of "
                f"{num_workers}; write at least (world size x workers) shards (smaller --max-per-shard)"
            )
        stream_seed = derive_seed(self.seed, self.name, self.epoch, rank, worker)
        regions = self._passes(mine, random.Random(stream_seed))
        for position in range(share):
            torch.manual_seed(derive_seed(stream_seed, position))
            yield self._item(next(regions))

    def _worker_share(self, rank_shards: list[str], worker: int, num_workers: int) -> int:
        """This worker's number of items: the rank's len(self) split in proportion to the regions each worker's
        shards hold, so that a rank holding exactly len(self) regions yields each of them once per epoch."""
        held = [sum(self.shard_regions[s] for s in rank_shards[w::num_workers]) for w in range(num_workers)]
        total = sum(held)
        if total == 0:
            return len(self) // num_workers + (worker < len(self) % num_workers)
        shares = [len(self) * h // total for h in held]
        for w in sorted(range(num_workers), key=lambda w: -held[w])[: len(self) - sum(shares)]:
            shares[w] += 1  # the remainder goes to the workers holding the most regions
        return shares[worker]

    def _passes(self, shards: list[str], rng: random.Random) -> Iterator[_Region | SkippedSample]:
        """Whole shuffled passes over `shards`, repeated until the consumer stops: all regions before any repeat."""
        while True:
            produced = False
            samples = wds.tarfile_to_samples()(iter([{"url": s} for s in shards]))
            for region in self._shuffled((r for sample in samples for r in self._regions(sample)), rng):
                produced = True
                yield region
            if not produced:
                raise RuntimeError(f"shards {shards} hold no regions")

    def _regions(self, sample: dict[str, Any]) -> Iterator[_Region | SkippedSample]:
        key = sample["__key__"]
        try:
            meta = json.loads(sample["json"])
            pairs = list(zip(meta["boxes"], meta["captions"], strict=True))
            jpg = sample["jpg"]
        except (KeyError, ValueError, TypeError) as e:
            yield SkippedSample(self.name, key, f"unreadable shard sample: {e!r}")
            return
        for k, (box, caption) in enumerate(pairs):
            yield _Region(f"{key}/{k}", jpg, box, caption, meta.get("image_id", key))

    def _shuffled(self, regions: Iterator[Any], rng: random.Random) -> Iterator[Any]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from regions
            return
        buffer: list[Any] = []
        for region in regions:
            buffer.append(region)
            if len(buffer) >= self.shuffle_buffer:
                j = rng.randrange(len(buffer))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _item(self, region: _Region | SkippedSample) -> dict | SkippedSample:
        if isinstance(region, SkippedSample):
            return region
        try:
            return self._read(region)
        except BadSampleError as e:
            return SkippedSample(self.name, e.sample_id, e.reason)

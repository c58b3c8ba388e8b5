"""Region-caption data at scale in webdataset shards: write them, and read them one (region, caption) at a time.

On disk, a folder holds `regions-000000.tar`, ... and `index.json`. Each tar sample is one image or one point cloud
(an object or a scene) with all its captions; `index.json`'s `payload` says which:
    {key}.jpg   the encoded image                                              (payload "jpg")
    {key}.npy   the point cloud, float32 [N, 3] xyz or [N, 6] xyz rgb (.npy)   (payload "npy")
    {key}.json  {"boxes": [...], "captions": [str, ...], "image_id": ..., "region_ids": [...] (point clouds)}
`captions[i]` describes `boxes[i]`: for an image an [x, y, w, h] pixel box; for a point cloud the region's 8 box
corners [[x, y, z] x 8] in the cloud's frame (corner order of lavis/processors/point_processors.py), or null when
the caption describes the whole cloud (Objaverse/Cap3D: the `pointcloud` modality, no region). `region_ids[i]` is
the id of a point-cloud caption's region in the evaluation ground truth (ScanRefer "scene|object", an Objaverse
uid); an image region's id is derived from the image id and its box, as RefCOCO's is. `index.json` also holds, per
shard, its file, samples, regions and offsets file (`regions-000000.offsets.npy`: where each sample's members lie
in the tar), and the totals, so an epoch's length is known without opening a tar; for point-cloud regions also the
region kind whose layout the corners follow (`region_kind`), checked against the dataset's when read. An index
without `payload` (written before point clouds were supported) holds images.

Two readers. `RegionShardMapDataset` seeks to one region's bytes: map-style, so the runner's sampler gives it an
exact, resumable order. `RegionShardDataset` streams whole tars (object stores, slow seeks): it splits the
epoch-shuffled shard list by rank, then by loader worker, with webdataset's splitters. Every rank yields exactly
ceil(regions / world size) items (cycling its shards if needed), because ranks must agree on the number of steps
or a collective hangs. A seeded shuffle buffer separates the regions of one image, which would otherwise share a
batch and act as false negatives for the contrastive loss. Each yielded item seeds torch's RNG from (seed, epoch,
rank, worker, position), so augmentation is reproducible. Both readers take the processor of the payload: a
`BoxImageProcessor` for images (items: image, region_geometry [4]), a `PointCloudProcessor` for point clouds (items:
points, and region_geometry [24] = the corners moved with the points, when the caption has a box).

Shards are a training format: one item per caption. Evaluate from the original layouts, which give one item per
region with all its captions as references.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import Dataset, IterableDataset
from tqdm import tqdm

from lavis.datasets.annotation_io import load_array
from lavis.datasets.base import BadSampleError, SkippedSample, cleaned_caption
from lavis.datasets.datasets.refcoco import load_image_and_box, region_id
from lavis.datasets.loaders import derive_seed
from lavis.processors.image_processors import BoxImageProcessor
from lavis.processors.point_processors import PointCloudError, PointCloudProcessor, corners_to_geometry
from lavis.processors.text_processors import CaptionProcessor

INDEX_NAME = "index.json"
INDEX_FORMAT = "region_shards/v1"
PAYLOADS = {"jpg": "images", "npy": "point clouds"}
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
    PAYLOAD: ClassVar[str] = "jpg"

    def encoded(self) -> tuple[bytes, dict[str, Any]]:
        """(payload bytes, json metadata) as stored in the tar."""
        meta = {"boxes": [list(map(float, b)) for b in self.boxes], "captions": list(self.captions),
                "image_id": self.image_id}
        return self.jpg, meta


@dataclass
class PointRegionSample:
    """One point cloud (an object or a scene) and its captions, as written to a shard."""

    key: str
    points: np.ndarray  # [N, 3] xyz or [N, 6] xyz rgb, stored as float32
    corners: list[Optional[Sequence]]  # per caption: its region's [8, 3] box corners, or None (the whole cloud)
    captions: list[str]
    image_id: ImageId  # the object's or scene's id
    region_ids: list[ImageId]  # per caption: the id of its region in the evaluation ground truth
    PAYLOAD: ClassVar[str] = "npy"

    def encoded(self) -> tuple[bytes, dict[str, Any]]:
        points = np.asarray(self.points)
        if points.ndim != 2 or points.shape[1] not in (3, 6):
            raise ValueError(f"sample {self.key}: points of shape {points.shape}, expected [N, 3] or [N, 6]")
        buffer = io.BytesIO()
        np.save(buffer, points.astype(np.float32), allow_pickle=False)  # read back with allow_pickle=False
        corners = [None if c is None else np.asarray(c, dtype=np.float64).reshape(8, 3).tolist()
                   for c in self.corners]
        if len(self.region_ids) != len(self.captions):
            raise ValueError(f"sample {self.key}: {len(self.region_ids)} region ids but {len(self.captions)} captions")
        meta = {"boxes": corners, "captions": list(self.captions), "image_id": self.image_id,
                "region_ids": list(self.region_ids)}
        return buffer.getvalue(), meta


def write_region_shards(
    samples: Iterable[RegionSample | PointRegionSample],
    out_dir: str | Path,
    *,
    max_per_shard: int = 1000,
    prefix: str = "regions",
    total: Optional[int] = None,
    progress: bool = True,
    region_kind: Optional[str] = None,
) -> Path:
    """Write samples into tar shards of at most `max_per_shard` samples plus `index.json`; returns the index path.

    All samples are images (RegionSample) or all are point clouds (PointRegionSample); the point-cloud captions are
    all of regions (with corners) or all of whole clouds, because one dataset's items must collate into one batch.
    """
    if max_per_shard < 1:
        raise ValueError(f"max_per_shard must be >= 1, not {max_per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    writer: Optional[wds.TarWriter] = None
    seen_keys: set[str] = set()
    payload: Optional[str] = None
    whole: set[bool] = set()  # whether captions describe whole clouds (no box): one kind per shard set
    try:
        for sample in tqdm(samples, total=total, disable=not progress, unit="sample", desc=f"writing {out_dir}"):
            if payload is not None and sample.PAYLOAD != payload:
                raise ValueError(f"sample {sample.key} holds {PAYLOADS[sample.PAYLOAD]}, the ones before it "
                                 f"{PAYLOADS[payload]}; write each kind to its own folder")
            payload = sample.PAYLOAD
            data, meta = sample.encoded()
            if len(meta["boxes"]) != len(meta["captions"]):
                raise ValueError(f"sample {sample.key}: {len(meta['boxes'])} boxes but {len(meta['captions'])} "
                                 "captions")
            whole |= {box is None for box in meta["boxes"]}
            if len(whole) > 1:
                raise ValueError(f"sample {sample.key}: captions with and without a box in one shard set; write "
                                 "region captions and whole-cloud captions to separate folders")
            key = _UNSAFE_KEY.sub("_", sample.key)
            if key in seen_keys:
                raise ValueError(f"sample key {sample.key!r} (written as {key!r}) is not unique")
            seen_keys.add(key)
            if writer is None or shards[-1]["samples"] == max_per_shard:
                if writer is not None:
                    writer.close()
                shards.append({"file": f"{prefix}-{len(shards):06d}.tar", "samples": 0, "regions": 0})
                writer = wds.TarWriter(str(out_dir / shards[-1]["file"]))
            meta["key"] = key
            writer.write({"__key__": key, payload: data, "json": meta})
            shards[-1]["samples"] += 1
            shards[-1]["regions"] += len(meta["captions"])
    finally:
        if writer is not None:
            writer.close()
    payload = payload or RegionSample.PAYLOAD  # no sample at all: an empty image set
    for shard in shards:
        shard["offsets"] = _write_offsets(out_dir / shard["file"], payload)
    index = {
        "format": INDEX_FORMAT,
        "payload": payload,
        "shards": shards,
        "samples": sum(s["samples"] for s in shards),
        "regions": sum(s["regions"] for s in shards),
    }
    if region_kind is not None:  # the corner layout of point-cloud regions
        index["region_kind"] = region_kind
    index_path = out_dir / INDEX_NAME
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(index_path)
    return index_path


def _write_offsets(shard: Path, payload: str) -> str:
    """Save, per sample of a closed shard, where its payload and json bytes lie, for random access; returns the file
    name. Rows: [payload offset, payload size, json offset, json size, regions], in the order samples were written.
    """
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    rows = []
    with tarfile.open(shard) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = member
        for parts in members.values():
            data, meta = parts[payload], parts["json"]
            regions = len(json.loads(tar.extractfile(meta).read())["boxes"])
            rows.append([data.offset_data, data.size, meta.offset_data, meta.size, regions])
    name = shard.name.replace(".tar", ".offsets.npy")
    np.save(shard.with_name(name), np.array(rows, dtype=np.int64).reshape(-1, 5))
    return name


def read_index(index_file: str | Path) -> dict[str, Any]:
    index = json.loads(Path(index_file).read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_file}: not a region shard index (format {index.get('format')!r}, "
                         f"expected {INDEX_FORMAT!r}); write shards with tools/write_region_shards.py")
    if index_payload(index) not in PAYLOADS:
        raise ValueError(f"{index_file}: unknown payload {index['payload']!r}; expected one of {sorted(PAYLOADS)}")
    return index


def check_region_kind(index_file: str | Path, wanted: Optional[str]) -> None:
    """ValueError when the shards' corners follow another region kind than `wanted`. Point-cloud shards written
    before the kind was recorded hold `box3d_corners` (the only layout then)."""
    index = read_index(index_file)
    stored = index.get("region_kind", "box3d_corners" if index_payload(index) == "npy" else None)
    if stored is not None and wanted is not None and stored != wanted:
        raise ValueError(f"{index_file}: the shards' corners are laid out as region kind '{stored}', but the dataset's "
                         f"region_kind is '{wanted}'; rewrite them with tools/write_region_shards.py --region-kind "
                         f"{wanted}")


def index_payload(index: dict[str, Any]) -> str:
    """"jpg" (images) or "npy" (point clouds); indexes written before point clouds were supported hold images."""
    return index.get("payload", RegionSample.PAYLOAD)


@dataclass(frozen=True)
class _Region:
    sample_id: str
    data: bytes  # the sample's payload: an encoded image or an .npy point cloud
    box: Optional[list]  # [x, y, w, h] pixels (image) | [8, 3] corners or None (point cloud)
    caption: str
    image_id: ImageId  # the image's / cloud's id
    region_id: Optional[ImageId]  # a point-cloud caption's stored evaluation id


def _stored_region(key: str, data: bytes, meta: dict[str, Any], k: int) -> _Region:
    region_ids = meta.get("region_ids")
    return _Region(f"{key}/{k}", data, meta["boxes"][k], meta["captions"][k], meta.get("image_id", key),
                   region_ids[k] if region_ids else None)


class ImageRegionDecoder:
    """A stored image region -> dataset item: image and box through the box-aware processor, the caption cleaned."""

    def __init__(self, image_processor: BoxImageProcessor, text_processor: CaptionProcessor):
        self.image_processor, self.text_processor = image_processor, text_processor

    def __call__(self, region: _Region) -> dict:
        caption = cleaned_caption(self.text_processor, region.caption, region.sample_id)
        image, box = load_image_and_box(region.data, region.box, self.image_processor.cfg, region.sample_id)
        pixels, geometry = self.image_processor(image, box)
        return {
            "image": pixels,
            "region_geometry": geometry,
            "text_input": caption,
            "sample_id": region.sample_id,
            "image_id": region_id(region.image_id, region.box),
        }


class PointRegionDecoder:
    """A stored point-cloud caption -> dataset item: the cloud and its region's corners go through the point
    processor together (same normalisation and augmentation); a caption without a box has no region_geometry."""

    def __init__(self, point_processor: PointCloudProcessor, text_processor: CaptionProcessor):
        self.point_processor, self.text_processor = point_processor, text_processor

    def __call__(self, region: _Region) -> dict:
        sample_id = region.sample_id
        caption = cleaned_caption(self.text_processor, region.caption, sample_id)
        try:
            array = load_array(region.data, f"the point cloud of {sample_id}")
        except ValueError as e:
            raise BadSampleError(sample_id, f"unreadable point cloud: {type(e).__name__}: {e}") from None
        corners = None
        if region.box is not None:
            try:
                corners = torch.tensor(region.box, dtype=torch.float32)
            except (TypeError, ValueError):
                corners = None
            if corners is None or corners.shape != (8, 3) or not torch.isfinite(corners).all():
                raise BadSampleError(sample_id, f"box corners {region.box!r} are not 8 finite [x, y, z] points")
        try:
            points, moved = self.point_processor(array, None if corners is None else corners[None])
        except PointCloudError as e:
            raise BadSampleError(sample_id, str(e)) from None
        item = {
            "points": points,
            "text_input": caption,
            "sample_id": sample_id,
            "image_id": region.region_id if region.region_id is not None else region.image_id,
        }
        if moved is not None:
            item["region_geometry"] = corners_to_geometry(moved[0])
        return item


def region_decoder(index_file: Path, payload: str, input_processor, text_processor: CaptionProcessor):
    """The decoder of `payload`, after checking that the processor fits it (an image processor cannot read points)."""
    expected = {"jpg": BoxImageProcessor, "npy": PointCloudProcessor}[payload]
    if not isinstance(input_processor, expected):
        raise ValueError(f"{index_file}: the shards hold {PAYLOADS[payload]}, to be read with a {expected.__name__}, "
                         f"not a {type(input_processor).__name__}")
    if payload == "jpg":
        return ImageRegionDecoder(input_processor, text_processor)
    return PointRegionDecoder(input_processor, text_processor)


def offsets_table(path: Path) -> np.ndarray:
    """A shard's offsets table: one row per image, (data at, data size, json at, json size, regions)."""
    table = load_array(path)
    if table.ndim != 2 or table.shape[1] != 5 or table.dtype.kind not in "iu":
        raise ValueError(f"{path}: an offsets table must be an integer array of shape [images, 5], got "
                         f"{table.dtype} {table.shape}; rewrite the shards with tools/write_region_shards.py")
    return table


class _ShardReader:
    """What both readers take from `index.json`: the shard files, and the decoder of the payload (checked against
    the processor they were given)."""

    def _open_index(self, index_file: str | Path, input_processor: BoxImageProcessor | PointCloudProcessor,
                    text_processor: CaptionProcessor) -> dict[str, Any]:
        self.index_file = Path(index_file)
        index = read_index(self.index_file)
        self.payload = index_payload(index)
        self.decode = region_decoder(self.index_file, self.payload, input_processor, text_processor)
        self.shard_files = [str(self.index_file.parent / s["file"]) for s in index["shards"]]
        return index


class RegionShardMapDataset(Dataset, _ShardReader):
    """Random access to the regions of the shards (via the offsets files): a map-style dataset, one item per region.

    This is what the runner's sampler needs for its exact, resumable epoch order; it reads one sample's bytes per
    item with a seek, so it suits local or network file systems, not object stores (use the stream there).
    `input_processor`: a BoxImageProcessor for image shards, a PointCloudProcessor for point-cloud shards.
    """

    def __init__(self, index_file: str | Path, input_processor: BoxImageProcessor | PointCloudProcessor,
                 text_processor: CaptionProcessor):
        index = self._open_index(index_file, input_processor, text_processor)
        tables = [offsets_table(self.index_file.parent / s["offsets"]) for s in index["shards"]]
        self.shard_of_image = np.concatenate([np.full(len(t), i, dtype=np.int32) for i, t in enumerate(tables)])
        self.offsets = np.concatenate(tables) if tables else np.zeros((0, 5), dtype=np.int64)
        self.first_region = np.concatenate([[0], np.cumsum(self.offsets[:, 4])])

    def __len__(self) -> int:
        return int(self.first_region[-1])

    def __getitem__(self, index: int) -> dict:
        image = int(np.searchsorted(self.first_region, index, side="right")) - 1
        k = index - int(self.first_region[image])
        data_at, data_size, json_at, json_size, _ = (int(v) for v in self.offsets[image])
        shard = self.shard_files[self.shard_of_image[image]]
        with open(shard, "rb") as f:
            f.seek(data_at)
            data = f.read(data_size)
            f.seek(json_at)
            meta = json.loads(f.read(json_size))
        return self.decode(_stored_region(meta.get("key", f"{Path(shard).stem}:{image}"), data, meta, k))


class RegionShardDataset(IterableDataset, _ShardReader):
    """Streams (region, caption) items from region shards; `len()` is the number of items this rank yields.
    `input_processor`: a BoxImageProcessor for image shards, a PointCloudProcessor for point-cloud shards."""

    def __init__(
        self,
        index_file: str | Path,
        input_processor: BoxImageProcessor | PointCloudProcessor,
        text_processor: CaptionProcessor,
        *,
        name: str = "region_shards",
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
    ):
        index = self._open_index(index_file, input_processor, text_processor)
        self.shard_regions = {path: int(s["regions"]) for path, s in zip(self.shard_files, index["shards"])}
        self.total_regions = int(index["regions"])
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
            if len(meta["boxes"]) != len(meta["captions"]):
                raise ValueError(f"{len(meta['boxes'])} boxes but {len(meta['captions'])} captions")
            regions = [_stored_region(key, sample[self.payload], meta, k) for k in range(len(meta["boxes"]))]
        except (KeyError, ValueError, TypeError, IndexError) as e:
            yield SkippedSample(self.name, key, f"unreadable shard sample: {e!r}")
            return
        yield from regions

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
            return self.decode(region)
        except BadSampleError as e:
            return SkippedSample(self.name, e.sample_id, e.reason)

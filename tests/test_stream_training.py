"""Region shards through the real training runner, random access and streaming: every region once per epoch, the
same step count either way, and a stream resumed mid-epoch reads the same remaining samples as the uninterrupted
run (by reading and dropping the batches already trained on)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lavis.common.config import load_config
from lavis.common.registry import RUNNERS
from lavis.datasets.datasets.region_shards import RegionSample, write_region_shards
from lavis.datasets.loaders import StreamingTrainStream, TrainStream
from tests.conftest import write_yaml

IMAGES, BATCH = 7, 4
REGIONS = 2 * IMAGES
BATCHES_PER_EPOCH = -(-REGIONS // BATCH)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("region_shards")
    samples = []
    for i in range(IMAGES):
        jpg = io.BytesIO()
        Image.new("RGB", (48, 40), (30 * i, 100, 200 - 20 * i)).save(jpg, format="JPEG")
        boxes = [[2 + i, 3, 10 + i, 12], [20, 5 + i, 15, 10]]
        samples.append(RegionSample(f"img{i}", jpg.getvalue(), boxes, [f"thing {i} left", f"thing {i} right"], i))
    write_region_shards(samples, root / "train", max_per_shard=2, progress=False)  # 4 shards
    return root


def all_region_ids() -> list[str]:
    return sorted(f"img{i}/{k}" for i in range(IMAGES) for k in range(2))


def run_config(out: Path, shard_root: Path, access: str, **run) -> dict:
    return {
        "model": {"arch": "toy_box_regressor"},
        "datasets": {
            "regions": {"builder": "region_shards", "modality": "image_region", "batch_size": BATCH,
                        "shard_root": str(shard_root), "access": access, "seed": 11, "shuffle_buffer": 3,
                        "train_image": {"image_size": 32, "crop_prob": 0.0, "color_jitter": 0.0}},
        },
        "run": {"imports": ["tests.region_stream_plugin"], "output_dir": str(out / "out"), "seed": 3, "max_epoch": 2,
                "num_workers": 0, "log_every_steps": 1, "tensorboard": False, "trace_samples": True,
                "lr_schedule": {"init_lr": 0.05, "min_lr": 0.005, "warmup_lr": 0.0, "warmup_steps": 1}, **run},
    }


def make_runner(out: Path, data: dict):
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = write_yaml(out / f"run_{len(list(out.glob('run_*.yaml')))}.yaml", data)
    cfg = load_config(str(cfg_path), [])
    return RUNNERS.get(cfg.run.runner)(cfg, cfg_path=str(cfg_path))


def traces(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "out" / "samples_rank0.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("access", ["random", "stream"])
def test_both_access_modes_train_every_region_once_per_epoch(tmp_path, shard_root, access):
    runner = make_runner(tmp_path, run_config(tmp_path, shard_root, access))
    expected_stream = StreamingTrainStream if access == "stream" else TrainStream
    assert isinstance(runner.streams[0], expected_stream)
    assert runner.streams[0].batches_per_epoch == BATCHES_PER_EPOCH  # the same plan either way
    before = runner.model.head.weight.detach().clone()
    runner.train()
    assert runner.global_step == 2 * BATCHES_PER_EPOCH
    assert not torch.equal(before, runner.model.head.weight)
    rows = traces(tmp_path)
    orders = []
    for epoch in (0, 1):
        in_epoch = [r for r in rows if r["epoch"] == epoch]
        assert [r["position"] for r in in_epoch] == list(range(BATCHES_PER_EPOCH))
        assert [len(r["sample_ids"]) for r in in_epoch] == [BATCH] * (BATCHES_PER_EPOCH - 1) + [REGIONS % BATCH]
        ids = [i for r in in_epoch for i in r["sample_ids"]]
        assert sorted(ids) == all_region_ids(), (access, epoch)
        orders.append(ids)
    assert orders[0] != orders[1]  # reshuffled per epoch (set_epoch reaches the stream)


@pytest.mark.parametrize("cut", [2, 5])  # mid-epoch 0, mid-epoch 1
def test_stream_resumed_mid_epoch_reads_the_same_remaining_samples(tmp_path, shard_root, cut):
    common = {"num_workers": 2}  # items from two loader workers, batches cut in the main process
    straight = make_runner(tmp_path / "straight", run_config(tmp_path / "straight", shard_root, "stream", **common))
    straight.train()

    resumed_dir = tmp_path / "resumed"
    first = make_runner(resumed_dir, run_config(resumed_dir, shard_root, "stream", **common, ckpt_every_steps=cut))
    first.train(stop_at_step=cut)
    resumed = make_runner(resumed_dir, run_config(resumed_dir, shard_root, "stream", **common,
                                                  resume_ckpt_path="auto"))
    assert (resumed.epoch, resumed.position) == divmod(cut, BATCHES_PER_EPOCH)
    resumed.train()

    # the trace of both parts together is the uninterrupted trace, batch for batch
    assert traces(resumed_dir) == traces(tmp_path / "straight")
    for name, value in straight.model.trainable_state_dict().items():
        assert torch.equal(value, resumed.model.trainable_state_dict()[name]), name
    for epoch in (0, 1):
        # two workers with unequal shards (4 + 4 + 4 + 2 regions): each worker's share follows the regions its
        # shards hold, so every region is read exactly once per epoch
        ids = [i for r in traces(resumed_dir) if r["epoch"] == epoch for i in r["sample_ids"]]
        assert sorted(ids) == all_region_ids(), epoch


def test_two_ranks_stream_the_same_number_of_steps(tmp_path, shard_root):
    from tests.test_distributed import torchrun

    cfg_path = write_yaml(tmp_path / "run.yaml", run_config(tmp_path, shard_root, "stream"))
    result = torchrun(2, "tests/dist_train_check.py", str(cfg_path))
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    finals = [torch.load(out / f"final_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    rows = [[json.loads(line) for line in (out / f"samples_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    per_rank = -(-REGIONS // 2)  # the stream's declared len() on each of 2 ranks
    plans = [[(t["epoch"], t["position"]) for t in r] for r in rows]
    assert plans[0] == plans[1] == [(e, p) for e in (0, 1) for p in range(-(-per_rank // BATCH))]
    for epoch in (0, 1):
        ids = [[i for t in r if t["epoch"] == epoch for i in t["sample_ids"]] for r in rows]
        assert [len(i) for i in ids] == [per_rank, per_rank]
        assert set(ids[0]).isdisjoint(ids[1])  # ranks stream different shards


class _Counting(torch.utils.data.IterableDataset):
    def __init__(self, declared: int, yields: int):
        self.declared, self.yields, self.epoch = declared, yields, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.declared

    def __iter__(self):
        for i in range(self.yields):
            yield {"sample_id": f"{self.epoch}-{i}", "x": torch.tensor(float(i))}


def build(dataset, repeat: int = 1):
    from lavis.datasets.loaders import build_train_stream

    return build_train_stream("counting", dataset, modality="m", batch_size=3, repeat=repeat, rank=0, world_size=1,
                              seed=0, num_workers=0, text_tokenizer=None, pin_memory=False)


def test_stream_batches_follow_the_declared_length_and_skip_on_resume():
    stream = build(_Counting(declared=7, yields=9))  # yielding more than declared: the extra is never read
    assert stream.batches_per_epoch == 3
    batches = list(stream.start_epoch(2, skip_batches=0))
    assert [b["sample_ids"] for b in batches] == [["2-0", "2-1", "2-2"], ["2-3", "2-4", "2-5"], ["2-6"]]
    assert [b["sample_ids"] for b in stream.start_epoch(2, skip_batches=2)] == [["2-6"]]
    short = build(_Counting(declared=7, yields=5))
    with pytest.raises(RuntimeError, match="ended after 5 items"):
        list(short.start_epoch(0, 0))


def test_stream_contract_is_checked_at_build():
    with pytest.raises(ValueError, match="repeat"):
        build(_Counting(4, 4), repeat=2)

    class NoLength(_Counting):
        __len__ = None

    with pytest.raises(TypeError, match="len"):
        build(NoLength(4, 4))

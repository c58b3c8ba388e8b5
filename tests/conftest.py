from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def toy_run_config(tmp_path: Path, **run_overrides) -> dict:
    """A two-modality run of the toy plugin model; callers change what they test."""
    run = {
        "imports": ["tests.toy_plugin"],
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
        "max_epoch": 2,
        "num_workers": 0,
        "log_every_steps": 1,
        "tensorboard": False,
        "lr_schedule": {"init_lr": 0.05, "min_lr": 0.005, "warmup_lr": 0.0, "warmup_steps": 2},
    }
    run.update(run_overrides)
    return {
        "model": {"arch": "toy_multimodal", "model_type": "base"},
        "datasets": {
            "set_a": {"builder": "toy_vectors", "modality": "vec_a", "batch_size": 4, "size": 16,
                      "input_key": "image", "aug_noise": 0.05},
            "set_b": {"builder": "toy_vectors", "modality": "vec_b", "batch_size": 4, "size": 8,
                      "input_key": "points", "data_seed": 1, "aug_noise": 0.05},
        },
        "run": run,
    }


def free_port() -> int:
    """A TCP port free on this host now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output, text) in its own process group: on timeout the whole group is killed, so a
    script's children (train.py under a shell script) do not outlive the test and slow the rest of the suite."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def one_thread():
    """For bit-for-bit comparisons: multi-threaded BLAS may round differently (1 ulp) when a buffer moves."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy_config(tmp_path):
    return toy_run_config(tmp_path)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A small synthetic world in the real formats (tools/make_synthetic_world.py) and tiny assets (untrained
    tokenizers and OPT) in <root>/assets, built once per session: the paths configs/demo/regionblip_tiny.yaml needs."""
    import subprocess
    import sys

    from lavis.models.tiny_assets import write_tiny_assets

    root = tmp_path_factory.mktemp("tiny_world")
    counts = ["--images", "10", "--objects", "10", "--scenes", "5", "--object-points", "512", "--scene-points", "2048"]
    subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic_world.py"), "--out", str(root), *counts],
                   check=True, capture_output=True)
    corpus = [line for line in (root / "corpus.txt").read_text().splitlines() if line.strip()]
    write_tiny_assets(root / "assets", corpus)
    return root


def tiny_demo_options(world: Path) -> list[str]:
    """--options that point configs/demo/regionblip_tiny.yaml's model paths at a `tiny_world`."""
    assets = world / "assets"
    return [f"model.qformers.blip2.config.tokenizer_path={assets / 'bert_tokenizer'}",
            f"model.qformers.point.config.tokenizer_path={assets / 'bert_tokenizer'}",
            f"model.llm.path={assets / 'opt'}"]


@pytest.fixture
def refer_mostly_zero_area(tmp_path) -> Path:
    """A RefCOCO `refer` layout (refcoco/refs(unc).p + instances.json) of 10 train refs, 6 of whose boxes have zero
    area: indexing keeps 4 annotations and lists 6 in the dataset's `skipped`. Images are never read."""
    import json
    import pickle

    root = tmp_path / "refer_zero_area"
    (root / "refcoco").mkdir(parents=True)
    (root / "images").mkdir()
    boxes = [[4, 4, 10, 8] if i < 4 else [4, 4, 0, 8] for i in range(10)]
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 100 + i, "image_id": 1, "bbox": box, "category_id": 1} for i, box in enumerate(boxes)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    refs = [{"ref_id": i, "ann_id": 100 + i, "image_id": 1, "split": "train", "category_id": 1,
             "sentences": [{"sent": f"thing {i}", "raw": f"thing {i}", "tokens": ["thing", str(i)], "sent_id": i}]}
            for i in range(10)]
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    with (root / "refcoco" / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


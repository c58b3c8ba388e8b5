from __future__ import annotations

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


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def toy_config(tmp_path):
    return toy_run_config(tmp_path)

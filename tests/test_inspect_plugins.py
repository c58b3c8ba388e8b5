"""tools/inspect_dataset.py finds a dataset builder registered by a plugin module, as a training run does: through
the run YAML's `run.imports`, or `--imports`; a module that cannot be imported is named in one line."""

from __future__ import annotations

import pytest

from tests.conftest import write_yaml
from tools import inspect_dataset

MODULE = "inspect_squares_plugin"
PLUGIN = '''
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from lavis.common.registry import DATASET_BUILDERS
from lavis.datasets.base import DatasetConfig


@dataclass
class SquaresConfig(DatasetConfig):
    size: int = 3


class Squares(Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return {"sample_id": f"square-{i}", "image": torch.rand(3, 16, 16), "text_input": "a square",
                "region_geometry": torch.tensor([0.1, 0.2, 0.6, 0.7])}


@DATASET_BUILDERS.register("plugin_squares")
class SquaresBuilder:
    Config = SquaresConfig
    DEFAULT_CONFIG = None

    def __init__(self, cfg: SquaresConfig):
        self.cfg = cfg

    def check_paths(self) -> list[str]:
        return []

    def build(self, split: str) -> Dataset:
        return Squares(self.cfg.size)
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))  # importable, as PYTHONPATH would make it


def test_a_run_yamls_imports_register_the_plugin_dataset(plugin_on_path, tmp_path, capsys):
    config = write_yaml(tmp_path / "run.yaml", {
        "model": {"arch": "regionblip", "model_type": "tiny"},
        "datasets": {"squares": {"builder": "plugin_squares", "modality": "image_region", "size": 5}},
        "run": {"imports": [MODULE], "output_dir": str(tmp_path / "out")},
    })
    out = tmp_path / "drawn"
    code = inspect_dataset.main(["--config", str(config), "--dataset", "squares", "--num", "2", "--out", str(out)])
    assert code == 0
    assert "plugin_squares/train: 5 items" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["plugin_squares_train_0.png", "plugin_squares_train_4.png"]


def test_imports_flag_with_a_builder_name(plugin_on_path, tmp_path):
    out = tmp_path / "drawn"
    code = inspect_dataset.main(["--builder", "plugin_squares", "--imports", MODULE, "--options", "size=2",
                                 "--num", "1", "--out", str(out)])
    assert code == 0 and len(list(out.glob("*.png"))) == 1


def test_a_module_that_does_not_import_is_named(tmp_path):
    with pytest.raises(SystemExit) as stop:
        inspect_dataset.main(["--builder", "plugin_squares", "--imports", "no_such_plugin_module", "--out",
                              str(tmp_path)])
    message = str(stop.value.code)
    assert "cannot import plugin module 'no_such_plugin_module'" in message and "PYTHONPATH" in message


def test_a_run_yaml_extending_a_base_is_read_whole(plugin_on_path, tmp_path, capsys):
    """--config reads the `base:` chain as train.py does: the dataset and the plugin import come from the base, a
    field from the YAML extending it; a dataset the child removes with null is gone."""
    write_yaml(tmp_path / "base.yaml", {
        "model": {"arch": "regionblip", "model_type": "tiny"},
        "datasets": {"squares": {"builder": "plugin_squares", "modality": "image_region", "size": 5},
                     "more_squares": {"builder": "plugin_squares", "modality": "image_region", "size": 4}},
        "run": {"imports": [MODULE], "output_dir": str(tmp_path / "out")},
    })
    child = write_yaml(tmp_path / "child.yaml", {"base": "base.yaml",
                                                 "datasets": {"squares": {"size": 3}, "more_squares": None}})
    out = tmp_path / "drawn"
    assert inspect_dataset.main(["--config", str(child), "--dataset", "squares", "--num", "1", "--out", str(out)]) == 0
    assert "plugin_squares/train: 3 items" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--dataset must be one of \['squares'\]"):
        inspect_dataset.main(["--config", str(child), "--dataset", "more_squares", "--out", str(out)])

"""The README stays true: its configuration tables match the typed configs they document (every key, and each
default that is a plain value), and the commands of its Extending section run as written, in a folder laid out as
the repository root after the demo's data step (on a small synthetic world)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from PIL import Image

from lavis.common.config import RunConfig
from lavis.models.regionblip.config import LOSS_TERMS, RegionBLIPConfig
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def table_after(lead: str) -> dict[str, tuple[str, str]]:
    """key -> (default, meaning) of the first table after the text `lead`."""
    rows, started = {}, False
    for line in README[README.index(lead):].splitlines():
        if not line.startswith("|"):
            if started:
                break
            continue
        started = True
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = re.fullmatch(r"`([^`]+)`", cells[0])
        if key:
            rows[key.group(1)] = (cells[1], cells[2])
    return rows


def config_keys(cls: type, instance: Any, prefix: str = "") -> dict[str, tuple[Any, bool]]:
    """Dotted key -> (default, is a leaf) of a config dataclass; a map of dataclasses is written `<key>`."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, tuple[Any, bool]] = {}
    for f in fields(cls):
        key, kind, value = prefix + f.name, hints[f.name], getattr(instance, f.name)
        args = typing.get_args(kind)
        if is_dataclass(kind):
            keys[key] = (value, False)
            keys.update(config_keys(kind, value, key + "."))
        elif typing.get_origin(kind) is dict and is_dataclass(args[1]):
            keys[key] = ({}, False)
            keys[key + ".<key>"] = (args[1](), False)
            keys.update(config_keys(args[1], args[1](), key + ".<key>."))
        else:
            keys[key] = (value, True)
    return keys


def _flow(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def default_cell(value: Any) -> Optional[str]:
    """How the tables write a default; None for one they describe in words (maps, lists)."""
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return "required" if value == "???" else f"`{value}`" if value else '`""`'
    if is_dataclass(value):
        return "`{" + ", ".join(f"{f.name}: {_flow(getattr(value, f.name))}" for f in fields(value)) + "}`"
    return None


def documented(key: str, rows: dict) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:n]) in rows for n in range(1, len(parts) + 1))


def test_every_run_key_is_documented_with_its_default():
    rows = table_after("`run:` keys")
    undocumented = [f.name for f in fields(RunConfig) if f.name not in rows]
    assert not undocumented, f"README's run: table lacks {undocumented}"
    assert not [k for k in rows if k not in {f.name for f in fields(RunConfig)}], "README documents unknown run keys"
    wrong = {}
    for f in fields(RunConfig):
        value = f.default if f.default is not MISSING else f.default_factory() if f.default_factory is not MISSING \
            else "???"
        expected = None if is_dataclass(value) else default_cell(value)  # blocks: written as YAML by hand
        if expected is not None and rows[f.name][0] != expected:
            wrong[f.name] = (rows[f.name][0], expected)
    assert not wrong, f"README default -> the config's: {wrong}"


def test_the_model_table_lists_every_key_with_its_default():
    rows = table_after("`model:` keys.")
    keys = config_keys(RegionBLIPConfig, RegionBLIPConfig())
    assert not [k for k, (_, leaf) in keys.items() if leaf and not documented(k, rows)], "undocumented model keys"
    assert not [k for k in rows if k not in keys], "README's model: table names keys the config does not have"
    wrong = {k: (cell, default_cell(keys[k][0])) for k, (cell, _) in rows.items()
             if default_cell(keys[k][0]) is not None and cell != default_cell(keys[k][0])}
    assert not wrong, f"README default -> the config's: {wrong}"


def test_the_documented_loss_terms_are_the_models():
    meaning = table_after("`model:` keys.")["modalities.<key>.losses"][1]
    assert sorted(re.findall(r"`(\w+)`", meaning)) == sorted(LOSS_TERMS)
    assert all(f"`{term}`" in README[README.index("Loss terms (`LOSS_TERMS`"):][:900] for term in LOSS_TERMS)


def test_readme_starts_with_the_two_commands():
    head = README[:800]
    assert "bash run_scripts/demo.sh" in head and "bash run_scripts/test.sh" in head


# ---- the Extending section, run as written -------------------------------------------------------------------------
def subsection(title: str) -> str:
    start = README.index(f"\n### {title}\n")
    ends = [i for i in (README.find("\n### ", start + 1), README.find("\n## ", start + 1)) if i > 0]
    return README[start:min(ends)]


def code_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", text, re.S)


def write_files(text: str, folder: Path) -> list[str]:
    """Each yaml / python block that names its file on its first line (`# x.yaml`, `\"\"\"x.py: ...`), written."""
    names = []
    for lang, body in code_blocks(text):
        first = body.splitlines()[0]
        name = re.match(r"# (\S+\.yaml)", first) if lang == "yaml" else re.match(r'"""(\w+\.py):', first)
        if name:
            (folder / name.group(1)).write_text(body)
            names.append(name.group(1))
    return names


def run_commands(text: str, folder: Path) -> list[str]:
    """Each line of the bash blocks (with its continuations), in `folder`, with `python` the test's interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{folder / 'bin'}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="2")
    commands = [c for lang, body in code_blocks(text) if lang == "bash"
                for c in body.replace("\\\n", " ").splitlines() if c.strip()]
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return commands


@pytest.fixture(scope="module")
def repository_root(tiny_world, tmp_path_factory) -> Path:
    """A folder laid out as the repository root once the demo has written data/demo: the repository's entry points,
    tools and configs (linked), data/demo (the session's tiny world) and `python` on PATH."""
    root = tmp_path_factory.mktemp("repository_root")
    for name in ("train.py", "evaluate.py", "tools", "configs"):
        (root / name).symlink_to(REPO / name)
    (root / "data").mkdir()
    (root / "data" / "demo").symlink_to(tiny_world)
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (root / "bin" / "python").chmod(0o755)
    return root


def trained_heads(run_dir: Path, modality: str) -> dict[str, torch.Size]:
    [checkpoint] = sorted(run_dir.glob("checkpoint_*.pth"))[-1:]
    tensors = torch.load(checkpoint, weights_only=True)["model"]
    return {k.split(f"heads.{modality}.", 1)[1]: v.shape for k, v in tensors.items() if f"heads.{modality}." in k}


def test_a_new_modality_by_yaml_alone(repository_root):
    text = subsection("A new modality: YAML alone")
    assert write_files(text, repository_root) == ["my_modality.yaml"]
    run_commands(text, repository_root)
    heads = trained_heads(repository_root / "output" / "my_modality", "image_box")
    assert heads["pafe.mlp.0.weight"][1] == 4 and heads["queries"][1] == 8  # its own PaFE (box2d) and queries


def test_a_plugin_region_kind_and_dataset(repository_root, tiny_world):
    text = subsection("A new region kind or dataset: a plugin module")
    assert write_files(text, repository_root) == ["my_boxes.py", "my_boxes.yaml"]
    boxes = repository_root / "data" / "my_boxes"  # the layout the section describes, from the tiny world's images
    boxes.mkdir()
    entries = []
    for image in sorted((tiny_world / "images" / "train2014").glob("*.jpg"))[:3]:
        (boxes / image.name).symlink_to(image)
        w, h = Image.open(image).size
        entries += [{"image": image.name, "box": [0, 0, w / 2, h / 2], "caption": "the top left corner"},
                    {"image": image.name, "box": [w / 2, h / 2, w, h], "caption": "the bottom right corner"}]
    (boxes / "train.json").write_text(json.dumps(entries))
    run_commands(text, repository_root)
    assert len(list((repository_root / "output" / "inspect_boxes").glob("box_list_train_*.png"))) == 2
    heads = trained_heads(repository_root / "output" / "my_boxes", "image_box")
    assert heads["pafe.mlp.0.weight"][1] == 5 and heads["reg_head.weight"][0] == 5  # the plugin's region kind


def test_inspecting_a_dataset(repository_root):
    text = subsection("Looking at a dataset before training on it")
    commands = run_commands(text, repository_root)
    assert len(commands) == 2
    drawn = sorted(p.name.split("_")[0] for p in (repository_root / "output" / "inspect").glob("*.png"))
    assert drawn == ["refcoco"] * 4 + ["scanrefer"] * 4

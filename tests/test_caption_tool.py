"""tools/caption.py on the tiny demo model: one caption for an image + box and for a point cloud (+ 3D box), a clear
refusal for a box outside the image, and --ckpt taking a training run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavis.common.config import load_config
from lavis.common.registry import MODELS
from tests.conftest import REPO, tiny_demo_options
from tools import caption

DEMO = str(REPO / "configs" / "demo" / "regionblip_tiny.yaml")


def run_tool(capsys, *args: str) -> str:
    caption.main(["--cfg-path", DEMO, *args])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines  # exactly one caption is printed
    return lines[0]


def first_box(world) -> tuple[str, list[float]]:
    instances = json.loads((world / "refcoco" / "instances.json").read_text())
    ann = instances["annotations"][0]
    image = next(i for i in instances["images"] if i["id"] == ann["image_id"])
    x, y, w, h = ann["bbox"]
    return str(world / "images" / "train2014" / image["file_name"]), [x, y, x + w, y + h]


def test_captions_an_image_region_and_point_clouds(tiny_world, capsys, tmp_path, monkeypatch):
    options = ["--options", *tiny_demo_options(tiny_world)]
    image, box = first_box(tiny_world)
    text = run_tool(capsys, "--image", image, "--box", *map(str, box), *options)
    assert text.strip()

    # a training run directory as --ckpt: its latest checkpoint is loaded. The saved weights differ from the ones
    # the tool builds (the image_region LLM projection is scaled), so only a loaded checkpoint changes the model.
    cfg = load_config(DEMO, tiny_demo_options(tiny_world))
    torch.manual_seed(cfg.run.seed)
    model_cls = MODELS.get(cfg.model_arch)
    state = model_cls.from_config(cfg.model).trainable_state_dict()
    key = "heads.image_region.llm_proj.weight"
    state[key] = state[key] * 25.0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": {k: torch.zeros_like(v) for k, v in state.items()}}, run_dir / "checkpoint_00000001.pth")
    torch.save({"model": state}, run_dir / "checkpoint_00000003.pth")  # the latest: the one to load
    generating = {}  # the tensor in the model at the moment it generates the caption
    original_generate = model_cls.generate

    def recording_generate(self, batch, *a, **kw):
        generating["weight"] = self.heads["image_region"].llm_proj.weight.detach().clone()
        return original_generate(self, batch, *a, **kw)

    monkeypatch.setattr(model_cls, "generate", recording_generate)
    assert run_tool(capsys, "--image", image, "--box", *map(str, box), "--ckpt", str(run_dir), *options).strip()
    assert torch.equal(generating["weight"], state[key])  # the latest checkpoint's perturbed tensor, not the init
    run_tool(capsys, "--image", image, "--box", *map(str, box), *options)
    assert torch.equal(generating["weight"] * 25.0, state[key])  # without --ckpt: the initial weights

    obj = tiny_world / "objaverse" / "obj00000" / "obj00000.npy"
    assert run_tool(capsys, "--points", str(obj), *options).strip()

    scene = tiny_world / "scanrefer" / "scannet_data" / "scene0000_00"
    boxes = np.load(f"{scene}_aligned_bbox.npy")
    box3d = [str(v) for v in boxes[0, :6]]  # centre and size of object 0
    assert run_tool(capsys, "--points", f"{scene}_aligned_vert.npy", "--box3d", *box3d, *options).strip()


def test_refuses_a_box_outside_the_image(tiny_world, capsys):
    image, _ = first_box(tiny_world)
    with pytest.raises(SystemExit) as exit_info:
        caption.main(["--cfg-path", DEMO, "--image", image, "--box", "10", "10", "400", "50",
                      "--options", *tiny_demo_options(tiny_world)])
    message = str(exit_info.value)
    assert "--box 10 10 400 50" in message and "lies outside the 96x96 image" in message
    assert capsys.readouterr().out == ""  # no caption printed


def test_refuses_a_region_modality_without_its_box(tiny_world):
    image, _ = first_box(tiny_world)
    with pytest.raises(SystemExit, match="captions a region: give --box"):
        caption.main(["--cfg-path", DEMO, "--image", image, "--modality", "image_region",
                      "--options", *tiny_demo_options(tiny_world)])

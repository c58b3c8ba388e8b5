"""tools/caption.py on the tiny demo model: one caption for an image + box and for a point cloud (+ 3D box), a clear
refusal for a box outside the image, --ckpt taking a training run directory, and --instruction with regions of mixed
kinds in placeholder order (converted to the modality's region kind) and a refused placeholder count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

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


@pytest.mark.parametrize("box3d", [["nan", "0", "0", "1", "1", "1"], ["0", "0", "0", "1", "inf", "1"]])
def test_refuses_a_box3d_that_is_not_finite(box3d, capsys):
    with pytest.raises(SystemExit):  # before the config is read: argparse's usage error
        caption.parse_args(["--cfg-path", DEMO, "--points", "scene.npy", "--box3d", *box3d])
    assert f"--box3d {' '.join(box3d)}: every value must be a finite number" in capsys.readouterr().err


def scene_and_box(world) -> tuple[str, np.ndarray]:
    scene = world / "scanrefer" / "scannet_data" / "scene0000_00"
    return f"{scene}_aligned_vert.npy", np.load(f"{scene}_aligned_bbox.npy")[0, :6]


@pytest.mark.parametrize("shift, expected", [
    ([1000.0, 0.0, 0.0], "the box lies outside the point cloud (x ["),
    (None, "the box spans no volume"),
])
def test_refuses_a_box3d_outside_the_cloud_or_without_volume(tiny_world, capsys, shift, expected):
    points, box = scene_and_box(tiny_world)
    if shift is None:
        values = [str(v) for v in box[:3].tolist() * 8]  # 8 corners in one point
    else:
        values = [str(v) for v in np.concatenate([box[:3] + shift, box[3:]])]
    with pytest.raises(SystemExit) as exit_info:
        caption.main(["--cfg-path", DEMO, "--points", points, "--box3d", *values,
                      "--options", *tiny_demo_options(tiny_world)])
    message = str(exit_info.value)
    assert message.startswith(f"error: --box3d {' '.join(f'{float(v):g}' for v in values)}: {expected}")
    assert capsys.readouterr().out == ""


def write_bad_cloud(path, kind: str):
    if kind == "strings":
        np.save(path, np.array([["a", "b", "c"]] * 4))
    elif kind == "garbage":
        path.write_bytes(b"not a ply file\n\x00\x01")
    elif kind == "no_vertices":
        path.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                        "property float z\nend_header\n")
    elif kind == "truncated":
        path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                        "property float z\nend_header\n1 2 3\n")
    elif kind == "flat":
        np.save(path, np.zeros(12, dtype=np.float32))


@pytest.mark.parametrize("name, kind, expected", [
    ("cloud.npy", "strings", "holds <U1 values, not numbers: save the array as float32"),
    ("cloud.ply", "garbage", "not a readable .ply file (PlyHeaderParseError"),
    ("cloud.ply", "no_vertices", "the .ply has no vertices"),
    ("cloud.ply", "truncated", "not a readable .ply file (PlyElementParseError"),
    ("cloud.npy", "flat", "expected an [N, >=3] array, got shape (12,)"),
])
def test_refuses_an_unreadable_point_file_naming_it(tiny_world, tmp_path, name, kind, expected):
    path = tmp_path / name
    write_bad_cloud(path, kind)
    with pytest.raises(SystemExit) as exit_info:
        caption.main(["--cfg-path", DEMO, "--points", str(path), "--options", *tiny_demo_options(tiny_world)])
    message = str(exit_info.value)
    assert str(path) in message and expected in message and "Traceback" not in message


# ---- --instruction with regions in placeholder order ----------------------------------------------------------
def recorded_batches(monkeypatch) -> list[dict]:
    """The batches the model generates from."""
    batches = []
    model_cls = MODELS.get("regionblip")
    original = model_cls.generate

    def recording(self, batch, *args, **kwargs):
        batches.append(batch)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(model_cls, "generate", recording)
    return batches


@pytest.mark.parametrize("kind", ["box2d", "mask2d"])
def test_instruction_takes_mixed_boxes_and_masks_in_order(tiny_world, capsys, tmp_path, monkeypatch, kind):
    """A box2d modality gets each mask's bounding box, a mask2d one each box's rectangle and each mask, in the
    order of the flags."""
    from pycocotools import mask as coco_mask

    image, _ = first_box(tiny_world)  # a 96 x 96 image
    png = np.zeros((96, 96), dtype=np.uint8)
    png[40:80, 50:80] = 255
    Image.fromarray(png).save(tmp_path / "mask.png")
    rle_mask = np.zeros((96, 96), dtype=np.uint8, order="F")
    rle_mask[6:30, 60:90] = 1
    rle = coco_mask.encode(rle_mask)
    (tmp_path / "mask.json").write_text(json.dumps({"size": rle["size"], "counts": rle["counts"].decode()}))
    batches = recorded_batches(monkeypatch)
    instruction = "Is <region> left of <region> or of <region>?"
    run_tool(capsys, "--image", image, "--instruction", instruction, "--box", "4", "4", "34", "24",
             "--mask", str(tmp_path / "mask.png"), "--mask", str(tmp_path / "mask.json"),
             "--options", *tiny_demo_options(tiny_world), f"model.modalities.image_region.region={kind}")
    batch, = batches
    assert batch["instruction"] == [instruction] and batch["region_counts"] == [3]
    boxes = torch.tensor([[4, 4, 34, 24], [50, 40, 80, 80], [60, 6, 90, 30]]) / 96
    torch.testing.assert_close(batch["region_geometry"], boxes.float())
    assert ("region_mask" in batch) == (kind == "mask2d")
    if kind == "mask2d":  # at the processed 64 x 64 image: the box's rectangle, then the two masks
        masks = batch["region_mask"]
        assert masks.shape == (3, 64, 64)
        for mask, box in zip(masks, boxes):
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            edges = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]).float()
            assert (edges - box * 64).abs().max() <= 1
            assert mask.sum() == (edges[2] - edges[0]) * (edges[3] - edges[1])  # rectangles, filled


def test_instruction_takes_point_sets_and_3d_boxes_in_order(tiny_world, capsys, monkeypatch):
    """A point_set modality gets --points-of rows as its mask and a --box3d's points; its geometry is each set's
    box corners."""
    points, box = scene_and_box(tiny_world)
    batches = recorded_batches(monkeypatch)
    run_tool(capsys, "--points", points, "--instruction", "Is <region> near <region>?",
             "--points-of", ",".join(str(i) for i in range(0, 2048, 2)), "--box3d", *map(str, box),
             "--options", *tiny_demo_options(tiny_world), "model.modalities.pointcloud_region.region=point_set")
    batch, = batches
    assert batch["region_counts"] == [2] and batch["region_geometry"].shape == (2, 24)
    masks = batch["region_mask"]  # over the 2048 processed points (stride sampling of the 2048 keeps them all)
    xyz = np.load(points)[:, :3]
    inside = (np.abs(xyz - box[:3]) <= box[3:] / 2).all(1)
    assert masks[0].sum() == 1024 and masks[1].sum() == inside.sum() > 0


def test_instruction_needs_one_region_per_placeholder(tiny_world, monkeypatch):
    monkeypatch.setattr(caption, "load_captioner", lambda *a, **kw: pytest.fail("the model was built"))
    image, box = first_box(tiny_world)
    with pytest.raises(SystemExit) as exit_info:
        caption.main(["--cfg-path", DEMO, "--image", image, "--instruction", "What is <region>?",
                      "--box", *map(str, box), "--box", *map(str, box), "--options", *tiny_demo_options(tiny_world)])
    assert ("--instruction has 1 '<region>' placeholder(s) but 2 region(s) were given (--box/--mask/--box3d/"
            "--points-of); give one region per placeholder") in str(exit_info.value)
    with pytest.raises(SystemExit, match="2 regions .* need --instruction with 2 '<region>' placeholders"):
        caption.main(["--cfg-path", DEMO, "--image", image, "--box", *map(str, box), "--box", *map(str, box),
                      "--options", *tiny_demo_options(tiny_world)])

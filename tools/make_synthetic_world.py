"""Write a small synthetic world in the real on-disk formats the dataset classes read, seeded and fast.

    python tools/make_synthetic_world.py --out data/synthetic [--images 400 --objects 400 --scenes 120 --seed 0]

What it writes (train / test splits, held out by construction):
  images/train2014/*.jpg, coco_karpathy_{train,val,test}.json   coloured shapes, one caption per image
  refcoco/refs(unc).p + refcoco/instances.json                     the `refer` layout: one referring sentence per
                                                                   shape ("small red circle at the top left")
  objaverse/{uid}/{uid}.npy + Cap3D_automated_Objaverse.csv        point-cloud objects, xyz + rgb (ULIP / Cap3D) and
  objaverse/test_uids.txt                                          the held-out uids
  scanrefer/ScanRefer_filtered_{train,val}.json + scannet_data/    scenes of several objects, ScanRefer layout
  corpus.txt                                                       every caption, for building tiny tokenizers
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 40)}
SHAPES_2D = ("circle", "square", "triangle")
SHAPES_3D = ("sphere", "cube", "cylinder", "cone", "torus")
IMAGE_SIZE = 96
CELLS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}


# ---- images ---------------------------------------------------------------------------------------------------------
def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], rgb) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=rgb)


def make_image(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """2-3 shapes, each in its own quadrant; returns the image and its shapes with COCO xywh boxes."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    shapes = []
    half = IMAGE_SIZE // 2
    cells = rng.choice(list(CELLS), size=rng.integers(2, 4), replace=False)
    # in reading order, so the image caption names the shapes in an order the image determines
    for where in sorted(cells, key=list(CELLS).index):
        cx, cy = CELLS[where]
        size_word = str(rng.choice(["small", "large"]))
        side = rng.uniform(12, 18) if size_word == "small" else rng.uniform(30, 40)
        x = cx * half + rng.uniform(2, half - side - 2)
        y = cy * half + rng.uniform(2, half - side - 2)
        shape, color = str(rng.choice(SHAPES_2D)), str(rng.choice(list(COLORS)))
        draw_shape(draw, shape, (x, y, x + side, y + side), COLORS[color])
        shapes.append({"shape": shape, "color": color, "size": size_word, "where": str(where),
                       "bbox": [round(x, 2), round(y, 2), round(side, 2), round(side, 2)]})
    return image, shapes


def image_caption(shapes: list[dict]) -> str:
    names = [f"a {s['color']} {s['shape']}" for s in shapes]
    return "a picture of " + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])


def write_images(root: Path, count: int, rng: np.random.Generator, corpus: list[str]) -> None:
    image_dir = root / "images" / "train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    karpathy = {"train": [], "val": [], "test": []}
    images, annotations, refs = [], [], []
    n_test = max(count // 5, 1)
    for image_id in range(count):
        split = "test" if image_id < n_test else "train"
        image, shapes = make_image(rng)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        image.save(image_dir / file_name, quality=95)
        rel = f"train2014/{file_name}"
        caption = image_caption(shapes)
        corpus.append(caption)
        if split == "train":
            karpathy["train"].append({"image": rel, "caption": caption, "image_id": f"coco_{image_id}"})
        else:
            karpathy["test"].append({"image": rel, "caption": [caption]})
            if image_id < n_test // 2:
                karpathy["val"].append({"image": rel, "caption": [caption]})
        images.append({"id": image_id, "file_name": file_name, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        for shape in shapes:
            ann_id = len(annotations)
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": shape["bbox"], "category_id": 1,
                                 "area": shape["bbox"][2] * shape["bbox"][3], "iscrowd": 0})
            sentence = f"{shape['size']} {shape['color']} {shape['shape']} at the {shape['where']}"
            corpus.append(sentence)
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                         "category_id": 1, "file_name": file_name,
                         "sentences": [{"sent": sentence, "raw": sentence, "tokens": sentence.split(),
                                        "sent_id": len(refs)}]})
    for split, entries in karpathy.items():
        (root / f"coco_karpathy_{split}.json").write_text(json.dumps(entries))
    refer = root / "refcoco"
    refer.mkdir(exist_ok=True)
    (refer / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]}))
    with (refer / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)


# ---- point clouds ---------------------------------------------------------------------------------------------------
def sample_surface(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on the surface of a unit-scale shape centred at the origin, z up."""
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    theta = 2 * np.pi * u
    if shape == "sphere":
        phi = np.arccos(2 * v - 1)
        pts = np.stack([np.sin(phi) * np.cos(theta), np.sin(phi) * np.sin(theta), np.cos(phi)], 1) * 0.5
    elif shape == "cube":
        pts = rng.uniform(-0.5, 0.5, (n, 3))
        axis = rng.integers(0, 3, n)
        pts[np.arange(n), axis] = np.sign(rng.uniform(-1, 1, n)) * 0.5
    elif shape == "cylinder":
        pts = np.stack([0.4 * np.cos(theta), 0.4 * np.sin(theta), v - 0.5], 1)
    elif shape == "cone":
        r = 0.45 * (1 - v)
        pts = np.stack([r * np.cos(theta), r * np.sin(theta), v - 0.5], 1)
    else:  # torus
        phi = 2 * np.pi * v
        pts = np.stack([(0.35 + 0.12 * np.cos(phi)) * np.cos(theta), (0.35 + 0.12 * np.cos(phi)) * np.sin(theta),
                        0.12 * np.sin(phi)], 1)
    return pts.astype(np.float32)


def make_object(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    shape, color = str(rng.choice(SHAPES_3D)), str(rng.choice(list(COLORS)))
    size_word = str(rng.choice(["small", "large"]))
    scale = 0.5 if size_word == "small" else 1.0
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], np.float32)
    xyz = sample_surface(shape, n, rng) @ rot.T * scale
    rgb = np.tile(np.array(COLORS[color], np.float32), (n, 1))
    return np.concatenate([xyz, rgb], 1), {"shape": shape, "color": color, "size": size_word}


def write_objects(root: Path, count: int, points: int, rng: np.random.Generator, corpus: list[str]) -> None:
    out = root / "objaverse"
    out.mkdir(parents=True, exist_ok=True)
    lines, test_uids = [], []
    for i in range(count):
        uid = f"obj{i:05d}"
        cloud, meta = make_object(rng, points)
        # The ULIP layout's `.npy` variant with colour (N x 6): the captions name colours.
        (out / uid).mkdir(exist_ok=True)
        np.save(out / uid / f"{uid}.npy", cloud)
        caption = f"a {meta['size']} {meta['color']} {meta['shape']}"
        corpus.append(caption)
        lines.append(f"{uid},{caption}")
        if i < max(count // 5, 1):
            test_uids.append(uid)
    (root / "Cap3D_automated_Objaverse.csv").write_text("\n".join(lines) + "\n")
    (out / "test_uids.txt").write_text("\n".join(test_uids) + "\n")


def write_scenes(root: Path, count: int, points: int, rng: np.random.Generator, corpus: list[str]) -> None:
    data_dir = root / "scanrefer" / "scannet_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "val": []}
    n_val = max(count // 5, 1)
    for s in range(count):
        scene_id = f"scene{s:04d}_00"
        k = int(rng.integers(3, 5))
        xs = np.sort(rng.choice(np.linspace(-3, 3, 7), size=k, replace=False))
        clouds, labels, boxes, metas = [], [], [], []
        per_object = points // k
        for obj_id, x in enumerate(xs):
            cloud, meta = make_object(rng, per_object)
            cloud[:, 0] += x
            cloud[:, 1] += rng.uniform(-1, 1)
            cloud[:, 2] += 0.5
            lo, hi = cloud[:, :3].min(0), cloud[:, :3].max(0)
            boxes.append([*((lo + hi) / 2), *(hi - lo), 1, obj_id])
            clouds.append(cloud)
            labels.append(np.full(per_object, obj_id, np.int64))
            metas.append(meta)
        xyz_rgb = np.concatenate(clouds)
        normals = np.zeros((len(xyz_rgb), 3), np.float32)
        np.save(data_dir / f"{scene_id}_aligned_vert.npy", np.concatenate([xyz_rgb, normals], 1))
        np.save(data_dir / f"{scene_id}_ins_label.npy", np.concatenate(labels))
        np.save(data_dir / f"{scene_id}_sem_label.npy", np.ones(len(xyz_rgb), np.int64))
        np.save(data_dir / f"{scene_id}_aligned_bbox.npy", np.array(boxes, np.float32))
        split = "val" if s < n_val else "train"
        for obj_id, meta in enumerate(metas):
            side, other = ("left", metas[obj_id + 1]) if obj_id + 1 < k else ("right", metas[obj_id - 1])
            text = f"the {meta['size']} {meta['color']} {meta['shape']} on the {side} of the {other['shape']}"
            corpus.append(text)
            splits[split].append({"scene_id": scene_id, "object_id": str(obj_id), "object_name": meta["shape"],
                                  "ann_id": "0", "description": text, "token": text.split()})
    for split, entries in splits.items():
        (root / "scanrefer" / f"ScanRefer_filtered_{split}.json").write_text(json.dumps(entries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--object-points", type=int, default=1024)
    parser.add_argument("--scene-points", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    corpus: list[str] = []
    write_images(args.out, args.images, np.random.default_rng(args.seed), corpus)
    write_objects(args.out, args.objects, args.object_points, np.random.default_rng(args.seed + 1), corpus)
    write_scenes(args.out, args.scenes, args.scene_points, np.random.default_rng(args.seed + 2), corpus)
    (args.out / "corpus.txt").write_text("\n".join(corpus) + "\n")
    print(f"wrote {args.images} images, {args.objects} objects, {args.scenes} scenes to {args.out}")


if __name__ == "__main__":
    main()

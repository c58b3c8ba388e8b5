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

With --sets regions (or all) it also writes, under regions/, instruction JSONL (README "Instruction data") for
regions of any shape (tools/score_region_answers.py scores answers to them; run_scripts/demo_regions.sh measures):
  overlap_{train,test}.jsonl + images/overlap_*.png   two shapes that overlap so that one box holds both (a ring
                                                     around a disc, an L-shape round a square, a cross over a ring:
                                                     the same box); a COCO RLE mask per shape, "Describe <region>."
                                                     -> "<colour> <shape>"
  multi_{train,test}.jsonl + images/multi_*.png      2-3 shapes an image, questions over 1-3 mask regions ("What
                                                     colour is <region>?", "Is <region> left of <region>?", "Which
                                                     is larger, <region> or <region>?", "Which is the largest of
                                                     <region>, <region> and <region>?")
  scenes_{train,test}.jsonl + scenes/*.npy           the same questions over 3-4 objects of a point-cloud scene
                                                     ([N, 6] xyz rgb), regions as `points_of` (the object's rows)
  corpus.txt                                         their captions and answers, for the tiny language model
The regions/ outputs come from their own random streams: the demo's files are byte-identical with or without them.
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


# ---- regions of any shape: instruction JSONL ------------------------------------------------------------------
# A patch of the demo's tiny ViT (64 px input, patch 8: an 8 x 8 grid) is 12 px of these 96 px images. The
# overlapping shapes keep about a patch between their parts (ring and disc, L-shape and square), so each shape holds
# patches the other does not and a mask changes what its queries see; a 4 x 4 grid would merge them.
REGION_BACKGROUND = (245, 245, 240)
ORDINALS = ("the first", "the second", "the third")
OVERLAP_PAIRS = ("ring_disc", "lshape_square", "ring_cross")


def rle_of(mask: np.ndarray) -> dict:
    """A bool [H, W] mask as COCO's compressed RLE (the string form pycocotools writes)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _layer(shape_draw) -> np.ndarray:
    """The pixels one shape's drawing covers, as a bool mask (the same PIL rasterisation as the image)."""
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    shape_draw(ImageDraw.Draw(canvas), 255)
    return np.asarray(canvas) > 0


def _overlap_layers(kind: str, rng: np.random.Generator) -> list[tuple[str, object]]:
    """(shape name, draw(draw, fill)) bottom first, of one overlapping pair."""
    if kind in ("ring_disc", "ring_cross"):
        outer = rng.uniform(36, 44)
        c = IMAGE_SIZE / 2 + rng.uniform(-(46 - outer), 46 - outer, 2)
        ring_box = (c[0] - outer, c[1] - outer, c[0] + outer, c[1] + outer)
        if kind == "ring_disc":  # a gap of >= one patch between the disc and the ring's inner edge
            width, r = int(rng.integers(9, 12)), rng.uniform(9, 13)
            disc = (c[0] - r, c[1] - r, c[0] + r, c[1] + r)
            return [("ring", lambda d, f: d.ellipse(ring_box, outline=f, width=width)),
                    ("disc", lambda d, f: d.ellipse(disc, fill=f))]
        width, arm = int(rng.integers(6, 9)), rng.uniform(5, 7)  # the cross spans the ring: the same box

        def cross(d, f):
            d.rectangle((c[0] - arm, ring_box[1], c[0] + arm, ring_box[3]), fill=f)
            d.rectangle((ring_box[0], c[1] - arm, ring_box[2], c[1] + arm), fill=f)
        return [("ring", lambda d, f: d.ellipse(ring_box, outline=f, width=width)), ("cross", cross)]
    side, arm, q = rng.uniform(66, 80), rng.uniform(22, 28), rng.uniform(18, 24)
    x, y = rng.uniform(4, IMAGE_SIZE - 4 - side, 2)
    # the L's vertical arm on the left, its foot at the bottom; the square in the notch, >= 10 px from both arms
    sx = rng.uniform(x + arm + 10, x + side - q)
    sy = rng.uniform(y, y + side - arm - 10 - q)
    lshape = [(x, y), (x + arm, y), (x + arm, y + side - arm), (x + side, y + side - arm), (x + side, y + side),
              (x, y + side)]
    return [("l-shape", lambda d, f: d.polygon(lshape, fill=f)),
            ("square", lambda d, f: d.rectangle((sx, sy, sx + q, sy + q), fill=f))]


def make_overlap_image(kind: str, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """Two overlapping shapes of different colours (flipped at random); each with its visible pixels' mask."""
    layers = _overlap_layers(kind, rng)
    colors = rng.choice(list(COLORS), size=2, replace=False)
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), REGION_BACKGROUND, np.uint8)
    covered = [_layer(draw) for _, draw in layers]
    for mask, color in zip(covered, colors):
        pixels[mask] = COLORS[str(color)]
    visible = [covered[0] & ~covered[1], covered[1]]
    flips = [axis for axis in (0, 1) if rng.uniform() < 0.5]  # 0: upside down, 1: mirrored
    if flips:
        pixels = np.ascontiguousarray(np.flip(pixels, flips))
        visible = [np.ascontiguousarray(np.flip(m, flips)) for m in visible]
    shapes = [{"shape": name, "color": str(color), "mask": mask}
              for (name, _), color, mask in zip(layers, colors, visible)]
    return Image.fromarray(pixels), shapes


def _record(record_id: str, media_key: str, media: str, regions: list[dict], question: str, answer: str) -> dict:
    return {"id": record_id, media_key: media, "regions": regions,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def write_overlap(root: Path, count: int, rng: np.random.Generator, corpus: list[str]) -> None:
    """One record per shape: "Describe <region>." with the shape's mask -> "<colour> <shape>"."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    n_test = max(count // 5, 1)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for i in range(count):
        kind = OVERLAP_PAIRS[i % len(OVERLAP_PAIRS)]
        image, shapes = make_overlap_image(kind, rng)
        name = f"overlap_{i:05d}.png"
        image.save(image_dir / name)
        split = "test" if i < n_test else "train"
        corpus.append(f"a {shapes[0]['color']} {shapes[0]['shape']} and a {shapes[1]['color']} {shapes[1]['shape']}")
        for k, shape in enumerate(shapes):
            answer = f"{shape['color']} {shape['shape']}"
            corpus.append(answer)
            splits[split].append(_record(f"overlap{i:05d}_{kind}_{k}", "image", f"images/{name}",
                                         [{"mask": rle_of(shape["mask"])}], "Describe <region>.", answer))
    _write_jsonl(root, "overlap", splits)


def _questions(objects: list[dict], rng: np.random.Generator, per_scene: int) -> list[tuple[list[int], str, str]]:
    """(object indices in placeholder order, question, answer) over one image's or scene's objects, each with
    "color", "size" ("small" / "large") and "x" (its centre, left to right); at most `per_scene`, kinds mixed."""
    n = len(objects)
    found: list[tuple[list[int], str, str]] = []
    for i in range(n):
        found.append(([i], "What colour is <region>?", objects[i]["color"]))
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    apart = [(i, j) for i, j in pairs if abs(objects[i]["x"] - objects[j]["x"]) > 8]
    if apart:
        i, j = apart[rng.integers(len(apart))]
        found.append(([i, j], "Is <region> left of <region>?", "yes" if objects[i]["x"] < objects[j]["x"] else "no"))
    sized = [(i, j) for i, j in pairs if objects[i]["size"] != objects[j]["size"]]
    if sized:
        i, j = sized[rng.integers(len(sized))]
        found.append(([i, j], "Which is larger, <region> or <region>?",
                      ORDINALS[0] if objects[i]["size"] == "large" else ORDINALS[1]))
    if n >= 3:
        three = [int(v) for v in rng.permutation(n)[:3]]
        large = [k for k, i in enumerate(three) if objects[i]["size"] == "large"]
        if len(large) in (1, 2):  # one of the three differs in size: the largest, or the smallest
            word, odd = ("largest", large[0]) if len(large) == 1 else \
                ("smallest", next(k for k in range(3) if k not in large))
            found.append((three, f"Which is the {word} of <region>, <region> and <region>?", ORDINALS[odd]))
    colours = found[:n]
    others = found[n:]
    keep = [colours[k] for k in rng.permutation(n)[: max(1, per_scene - len(others))]]
    return others + keep


def write_multi_images(root: Path, count: int, rng: np.random.Generator, corpus: list[str]) -> None:
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    n_test = max(count // 5, 1)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for i in range(count):
        image, shapes = make_image(rng)
        name = f"multi_{i:05d}.png"
        image.save(image_dir / name)
        objects, regions = [], []
        for s in shapes:
            x, y, w, h = s["bbox"]
            box = (x, y, x + w, y + h)
            mask = _layer(lambda d, f, shape=s["shape"], box=box: draw_shape(d, shape, box, f))
            regions.append({"mask": rle_of(mask)})
            objects.append({"color": s["color"], "size": s["size"], "x": x + w / 2})
        split = "test" if i < n_test else "train"
        for q, (which, question, answer) in enumerate(_questions(objects, rng, per_scene=5)):
            corpus.append(answer)
            splits[split].append(_record(f"multi{i:05d}_{q}", "image", f"images/{name}",
                                         [regions[k] for k in which], question, answer))
    _write_jsonl(root, "multi", splits)


def write_region_scenes(root: Path, count: int, points: int, rng: np.random.Generator, corpus: list[str]) -> None:
    """Point-cloud scenes of 3-4 objects in a row along x; questions over their point sets (`points_of`)."""
    scene_dir = root / "scenes"
    scene_dir.mkdir(parents=True, exist_ok=True)
    n_test = max(count // 5, 1)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for s in range(count):
        k = int(rng.integers(3, 5))
        xs = np.sort(rng.choice(np.linspace(-3, 3, 7), size=k, replace=False))
        clouds, objects, rows = [], [], []
        per_object = points // k
        for obj_id, x in enumerate(xs):
            cloud, meta = make_object(rng, per_object)
            cloud[:, 0] += x
            cloud[:, 1] += rng.uniform(-1, 1)
            cloud[:, 2] += 0.5
            clouds.append(cloud)
            rows.append(list(range(obj_id * per_object, (obj_id + 1) * per_object)))
            # x in the images' units (pixels, > 8 apart means apart): here objects are >= 1 apart
            objects.append({"color": meta["color"], "size": meta["size"], "x": float(x) * 100})
        name = f"scene_{s:05d}.npy"
        np.save(scene_dir / name, np.concatenate(clouds))
        split = "test" if s < n_test else "train"
        for q, (which, question, answer) in enumerate(_questions(objects, rng, per_scene=5)):
            corpus.append(answer)
            splits[split].append(_record(f"scene{s:05d}_{q}", "points", f"scenes/{name}",
                                         [{"points_of": rows[j]} for j in which], question, answer))
    _write_jsonl(root, "scenes", splits)


def _write_jsonl(root: Path, stem: str, splits: dict[str, list[dict]]) -> None:
    for split, records in splits.items():
        with (root / f"{stem}_{split}.jsonl").open("w") as f:
            f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def write_region_world(root: Path, args: argparse.Namespace) -> None:
    """The regions/ sets, each from its own random stream (seed + 10, 11, 12)."""
    root.mkdir(parents=True, exist_ok=True)
    corpus: list[str] = []
    write_overlap(root, args.overlap_images, np.random.default_rng(args.seed + 10), corpus)
    write_multi_images(root, args.multi_images, np.random.default_rng(args.seed + 11), corpus)
    write_region_scenes(root, args.region_scenes, args.region_scene_points, np.random.default_rng(args.seed + 12),
                        corpus)
    # the instructions too, once each, so the tiny tokenizer and LM know their words
    questions = {r["conversations"][0]["value"] for stem in ("overlap", "multi", "scenes")
                 for line in (root / f"{stem}_train.jsonl").read_text().splitlines() for r in [json.loads(line)]}
    (root / "corpus.txt").write_text("\n".join(corpus + sorted(questions)) + "\n")
    print(f"wrote {args.overlap_images} overlap images, {args.multi_images} multi-region images, "
          f"{args.region_scenes} scenes to {root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--objects", type=int, default=400)
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--object-points", type=int, default=1024)
    parser.add_argument("--scene-points", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", choices=["demo", "regions", "all"], default="demo",
                        help="demo: the demo's files; regions: only regions/ (instruction JSONL); all: both")
    parser.add_argument("--overlap-images", type=int, default=450)
    parser.add_argument("--multi-images", type=int, default=300)
    parser.add_argument("--region-scenes", type=int, default=200)
    parser.add_argument("--region-scene-points", type=int, default=2048)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sets in ("demo", "all"):
        corpus: list[str] = []
        write_images(args.out, args.images, np.random.default_rng(args.seed), corpus)
        write_objects(args.out, args.objects, args.object_points, np.random.default_rng(args.seed + 1), corpus)
        write_scenes(args.out, args.scenes, args.scene_points, np.random.default_rng(args.seed + 2), corpus)
        (args.out / "corpus.txt").write_text("\n".join(corpus) + "\n")
        print(f"wrote {args.images} images, {args.objects} objects, {args.scenes} scenes to {args.out}")
    if args.sets in ("regions", "all"):
        write_region_world(args.out / "regions", args)


if __name__ == "__main__":
    main()

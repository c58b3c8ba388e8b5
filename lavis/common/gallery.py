"""The evaluation gallery: for each captioned dataset, thumbnails of its worst and best samples by per-sample CIDEr
(the image with its box, or a view of the cloud with its 3D box, as the model received them after processing), with
the ground-truth captions and the generated one, on one static page `<output_dir>/gallery/index.html`; the same
thumbnails go to TensorBoard when `run.tensorboard` is on. `run.gallery_samples` samples per dataset (0: none).

Each dataset writes `gallery/<dataset>_<split>.json` (its entries) and its PNGs; the page is rebuilt from every such
file in the folder, so datasets evaluated one by one end up on one page.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from lavis.common.caption_metrics import CaptionReport, load_references
from lavis.datasets.base import BadSampleError

log = logging.getLogger(__name__)
GALLERY_DIR = "gallery"
THUMB_PX = 256  # thumbnails are THUMB_PX x THUMB_PX
BOX_COLOUR = "#ff00ff"


def pick_samples(per_image: dict[Any, dict[str, float]], count: int) -> list[tuple[Any, str]]:
    """(image id, "worst" | "best"): of n = min(count, samples), the ceil(n / 2) lowest CIDEr, then the floor(n / 2)
    highest (best first); ties are broken by id, so the choice is the same run after run."""
    ranked = sorted(per_image, key=lambda i: (per_image[i]["CIDEr"], str(i)))
    count = min(count, len(ranked))
    worst = ranked[: (count + 1) // 2]
    best = ranked[::-1][: count // 2]
    return [(i, "worst") for i in worst] + [(i, "best") for i in best]


def find_items(dataset, wanted: set) -> dict[Any, dict[str, Any]]:
    """image id -> the dataset's item, reading in order until each wanted id is found (at most one more pass over
    the eval split; bad samples are passed over, as evaluation did)."""
    found: dict[Any, dict[str, Any]] = {}
    for index in range(len(dataset)):
        try:
            item = dataset[index]
        except BadSampleError:
            continue
        if item.get("image_id") in wanted and item["image_id"] not in found:
            found[item["image_id"]] = item
            if len(found) == len(wanted):
                break
    return found


def image_pixels(image, mean: Optional[list[float]], std: Optional[list[float]]) -> np.ndarray:
    """A normalised [3, H, W] tensor back to [H, W, 3] in [0, 1]: with the processor's mean and std, else by range."""
    array = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    if mean is not None and std is not None:
        array = array * np.asarray(std) + np.asarray(mean)
    else:
        array = (array - array.min()) / max(float(np.ptp(array)), 1e-6)
    return np.clip(array, 0.0, 1.0)


def box_edges(corners: np.ndarray) -> list[tuple[int, int]]:
    """The 12 edges of an axis-aligned box from its 8 corners in any order: corner pairs that differ along one axis."""
    tolerance = 1e-4 * max(float(np.ptp(corners)), 1e-6)
    return [(a, b) for a in range(8) for b in range(a + 1, 8)
            if int((np.abs(corners[a] - corners[b]) <= tolerance).sum()) == 2]


def render_thumbnail(item: dict[str, Any], path: Path, image_cfg: Any = None) -> np.ndarray:
    """Draw one processed item (image + box, or points + 3D box) as a THUMB_PX square PNG; returns its pixels."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    dpi = 64
    figure = plt.figure(figsize=(THUMB_PX / dpi, THUMB_PX / dpi), dpi=dpi)
    geometry = item.get("region_geometry")
    image, points = item.get("image"), item.get("points")
    if not (image is not None and image.dim() == 3 and image.shape[0] == 3) and \
            not (points is not None and points.dim() == 2 and points.shape[1] >= 3):
        # a plugin modality's input (features, a vector): no picture, the captions still tell
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in item.items() if hasattr(v, "shape"))
        figure.text(0.5, 0.5, f"no picture of\n{shapes}", ha="center", va="center", wrap=True)
    elif image is not None and image.dim() == 3:
        axes = figure.add_axes((0, 0, 1, 1))
        pixels = image_pixels(item["image"], getattr(image_cfg, "mean", None), getattr(image_cfg, "std", None))
        axes.imshow(pixels)
        if geometry is not None and len(geometry) == 4:  # box2d: x1 y1 x2 y2 in [0, 1] of the image
            h, w = pixels.shape[:2]
            x1, y1, x2, y2 = geometry.tolist()
            axes.add_patch(plt.Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                                         edgecolor=BOX_COLOUR, linewidth=2.5))
        axes.set_axis_off()
    else:
        points = points.detach().float().cpu().numpy()
        axes = figure.add_axes((0, 0, 1, 1), projection="3d")
        colours = None
        if points.shape[1] >= 6:
            rgb = points[:, 3:6]
            colours = np.clip((rgb - rgb.min()) / max(float(np.ptp(rgb)), 1e-6), 0, 1)
        axes.scatter(points[:, 0], points[:, 1], points[:, 2], s=1.5, c=colours, depthshade=False)
        if geometry is not None and len(geometry) == 24:  # 3D box: 8 corners in the points' frame
            corners = geometry.detach().float().cpu().numpy().reshape(8, 3)
            for a, b in box_edges(corners):
                axes.plot(*zip(corners[a], corners[b]), color=BOX_COLOUR, linewidth=2)
        axes.view_init(elev=35, azim=-60)
        axes.set_axis_off()
    figure.savefig(path, dpi=dpi)
    figure.canvas.draw()
    rendered = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return rendered


def write_gallery(run_cfg: Any, output_dir: Path, name: str, ds_cfg: Any, build_dataset: Callable[[], Any],
                  scored: CaptionReport, results: list[dict[str, Any]]) -> Optional[Path]:
    """The gallery entries of one dataset and the page; None when run.gallery_samples is 0 or nothing is scored.
    `build_dataset` builds the eval split (called only when a gallery is drawn)."""
    count = run_cfg.gallery_samples
    if count <= 0 or not scored.per_image:
        return None
    folder = output_dir / GALLERY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{ds_cfg.eval_split}"
    chosen = pick_samples(scored.per_image, count)
    items = find_items(build_dataset(), {i for i, _ in chosen})
    references = load_references(ds_cfg.eval_gt_file)
    captions = {r["image_id"]: r["caption"] for r in results}
    writer = tensorboard_writer(output_dir) if run_cfg.tensorboard else None
    entries = []
    for n, (image_id, rank) in enumerate(chosen):
        if image_id not in items:  # read fine in evaluation, bad now: the file changed since
            log.warning("gallery %s: sample %s could not be read again; left out", stem, image_id)
            continue
        png = f"{stem}_{n:03d}_{rank}.png"
        pixels = render_thumbnail(items[image_id], folder / png, getattr(ds_cfg, "eval_image", None))
        entry = {"image_id": image_id, "rank": rank, "png": png, "cider": scored.per_image[image_id]["CIDEr"],
                 "caption": captions[image_id], "references": references.get(image_id, [])}
        entries.append(entry)
        if writer is not None:
            writer.add_image(f"gallery/{stem}/{n:03d}_{rank}", pixels, 0, dataformats="HWC")
            writer.add_text(f"gallery/{stem}/{n:03d}_{rank}", caption_markdown(entry), 0)
    if writer is not None:
        writer.close()
    fragment = {"dataset": name, "split": ds_cfg.eval_split, "modality": ds_cfg.modality, "entries": entries}
    (folder / f"{stem}.json").write_text(json.dumps(fragment, indent=1))
    page = write_page(folder)
    log.info("gallery: %d samples of %s in %s", len(entries), stem, page)
    return page


def tensorboard_writer(output_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(output_dir / "tensorboard"))


def caption_markdown(entry: dict[str, Any]) -> str:
    refs = "  \n".join(f"- {r}" for r in entry["references"])
    head = f"**generated** ({entry['rank']}, CIDEr {entry['cider']:.3f}): {entry['caption']}"
    return f"{head}  \n**ground truth**:  \n{refs}"


def write_page(folder: Path) -> Path:
    """index.html from every dataset's fragment in `folder`."""
    sections = []
    for fragment_file in sorted(folder.glob("*.json")):
        fragment = json.loads(fragment_file.read_text())
        cards = []
        for e in fragment["entries"]:
            refs = "".join(f"<li>{html.escape(r)}</li>" for r in e["references"])
            cards.append(
                f'<figure class="{e["rank"]}"><img src="{html.escape(e["png"])}" width="{THUMB_PX}" '
                f'height="{THUMB_PX}" alt="{html.escape(str(e["image_id"]))}"><figcaption>'
                f'<b>{e["rank"]}</b> CIDEr {e["cider"]:.3f} &middot; {html.escape(str(e["image_id"]))}'
                f'<p class="generated">{html.escape(e["caption"])}</p><ul class="gt">{refs}</ul>'
                "</figcaption></figure>")
        title = f'{fragment["dataset"]} ({fragment["modality"]}, {fragment["split"]})'
        sections.append(f"<h2>{html.escape(title)}</h2><div class=\"grid\">{''.join(cards)}</div>")
    style = ("body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:12px}"
             f"figure{{width:{THUMB_PX}px;margin:0}}figcaption{{font-size:13px}}.worst b{{color:#b00}}"
             ".best b{color:#070}.generated{font-style:italic}")
    page = folder / "index.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Evaluation gallery</title>"
                    f"<style>{style}</style></head><body><h1>Evaluation gallery: worst and best samples by CIDEr"
                    f"</h1>{''.join(sections)}</body></html>\n")
    return page

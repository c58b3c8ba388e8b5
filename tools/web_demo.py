"""An interactive web page (Gradio) that captions an image, a box in it, a point cloud or a 3D box in it, with one
model loaded once from a training run folder.

    python tools/web_demo.py --run output/demo/stage2 [--cfg-path CONFIG.yaml] [--port 7860] [--host 127.0.0.1]

--cfg-path defaults to the run's own config.yaml; the run's latest checkpoint is loaded (tools/caption.py's rules:
the checkpoint's config must fit this one). Inputs go through the evaluation processor of a dataset of the chosen
modality, exactly as tools/caption.py and evaluate.py process them.

Image tab: upload an image (or pick one of the config's dataset images), click two opposite corners of the box on it
(or type x1 y1 x2 y2), choose the modality, beams and maximum length, press Caption. Point-cloud tab: upload a .npy /
.npz / .ply cloud (or pick one), set the 3D box's centre and size (drawn into the 3D view), press Caption.
"""

from __future__ import annotations

import argparse
import os
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageDraw

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo runs offline: no usage reports
import gradio as gr  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from lavis.common.captioner import POINT_SUFFIXES, Captioner, input_item, load_captioner  # noqa: E402
from lavis.common.config import load_config  # noqa: E402
from lavis.common.config_schema import ConfigError  # noqa: E402
from lavis.datasets.annotation_io import load_array  # noqa: E402
from lavis.datasets.datasets.scanrefer import read_ply_vertices  # noqa: E402
from lavis.processors.image_processors import ImageReadError, load_rgb_image  # noqa: E402
from lavis.processors.point_processors import PointCloudError  # noqa: E402

INPUT_ERRORS = (ValueError, ImageReadError, ConfigError, FileNotFoundError, PointCloudError)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_EXAMPLES = 30  # files offered per tab from the config's datasets
SHOWN_IMAGE_SIDE = 384  # a smaller image is shown enlarged by a whole factor, so each of its pixels can be clicked
MAX_PLOTTED_POINTS = 6000  # a browser draws this many markers smoothly; the model still sees the whole cloud
BOX_COLOUR = (255, 0, 255)  # magenta: no synthetic shape has it
# the 12 edges of a box between its corners indexed by (x, y, z) bits: corner k = (k & 1, k >> 1 & 1, k >> 2 & 1)
BOX_EDGES = [(a, b) for a in range(8) for b in range(8) if a < b and bin(a ^ b).count("1") == 1]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a training run folder (its latest checkpoint)")
    parser.add_argument("--cfg-path", default=None, help="the run YAML (default: RUN/config.yaml)")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    args = parser.parse_args(argv)
    if args.cfg_path is None:
        args.cfg_path = str(args.run / "config.yaml")
        if not Path(args.cfg_path).is_file():
            parser.error(f"--run {args.run} has no config.yaml; give --cfg-path")
    return args


# ---- the inputs, checked; every failure becomes a message in the page -------------------------------------------
def read_cloud(path: str) -> np.ndarray:
    """A cloud file as float32 [N, >=3]; ValueError with what is wrong otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in POINT_SUFFIXES:
        raise ValueError(f"{Path(path).name} is not a point cloud: use a {', '.join(POINT_SUFFIXES)} file")
    array = read_ply_vertices(Path(path)) if suffix == ".ply" else load_array(path, Path(path).name)
    if array.ndim != 2 or array.shape[1] < 3 or len(array) == 0:
        raise ValueError(f"{Path(path).name}: expected an [N, >=3] array of points (x y z [r g b]), got shape "
                         f"{tuple(array.shape)}")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array[:, :3]).all():
        raise ValueError(f"{Path(path).name}: the coordinates hold nan or inf")
    return array


def box_values(values: list[Optional[float]], what: str, count: int) -> Optional[list[float]]:
    """None when every field is empty (no box); the numbers when all are set; ValueError when only some are."""
    if all(v is None for v in values):
        return None
    if any(v is None for v in values) or len(values) != count:
        raise ValueError(f"the {what} needs all {count} fields (or none, for no box)")
    return [float(v) for v in values]


def display_scale(image: Image.Image) -> int:
    return max(1, SHOWN_IMAGE_SIDE // max(image.size))


def draw_box(image: Image.Image, box: Optional[list[float]], corner: Optional[tuple[int, int]] = None) -> Image.Image:
    """The image as shown (enlarged by display_scale) with the box, or the first corner clicked, drawn in."""
    scale = display_scale(image)
    shown = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    pen = ImageDraw.Draw(shown)
    width = max(2, round(max(shown.size) / 150))
    if box is not None:
        pen.rectangle([v * scale for v in box], outline=BOX_COLOUR, width=width)
    if corner is not None:  # waiting for the second corner
        x, y, r = corner[0] * scale, corner[1] * scale, 2 * width
        pen.ellipse((x - r, y - r, x + r, y + r), outline=BOX_COLOUR, width=width)
    return shown


def box_corners(centre: np.ndarray, size: np.ndarray) -> np.ndarray:
    bits = np.array([[k & 1, k >> 1 & 1, k >> 2 & 1] for k in range(8)], dtype=np.float32)
    return centre + (bits - 0.5) * size


def cloud_figure(array: np.ndarray, box: Optional[list[float]]) -> go.Figure:
    shown = array[:: max(1, len(array) // MAX_PLOTTED_POINTS)]
    marker: dict[str, Any] = {"size": 2}
    if shown.shape[1] >= 6:
        rgb = shown[:, 3:6] * (255.0 if shown[:, 3:6].max() <= 1.0 else 1.0)
        marker["color"] = [f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in np.clip(rgb, 0, 255)]
    figure = go.Figure(go.Scatter3d(x=shown[:, 0], y=shown[:, 1], z=shown[:, 2], mode="markers", marker=marker,
                                    name="points"))
    if box is not None:
        corners = box_corners(np.array(box[:3]), np.array(box[3:]))
        xyz = [[*corners[a], *corners[b]] for a, b in BOX_EDGES]
        lines = np.array([[p[:3], p[3:], [np.nan] * 3] for p in xyz]).reshape(-1, 3)  # nan breaks the line
        figure.add_trace(go.Scatter3d(x=lines[:, 0], y=lines[:, 1], z=lines[:, 2], mode="lines", name="box",
                                      line={"color": "rgb(255,0,255)", "width": 6}))
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, height=460, scene={"aspectmode": "data"},
                         showlegend=False)
    return figure


def default_box3d(array: np.ndarray) -> list[float]:
    """A box around the cloud's centre, a quarter of its extent: something to move, not a guess of an object."""
    low, high = array[:, :3].min(0), array[:, :3].max(0)
    return [*((low + high) / 2).tolist(), *np.maximum((high - low) / 4, 1e-3).tolist()]


def example_files(cfg, input_key: str) -> list[str]:
    """Files of the config's datasets to try: images under an `image_root`, clouds under a `points_root` or a
    ScanNet `scannet_data_root` (its *_vert.npy scenes; the other .npy there are boxes and labels)."""
    roots = {"image": [("image_root", IMAGE_SUFFIXES)],
             "points": [("points_root", POINT_SUFFIXES), ("scannet_data_root", ("_vert.npy",))]}[input_key]
    found: list[str] = []
    for ds in cfg.datasets.values():
        for attribute, endings in roots:
            root = getattr(ds, attribute, None)
            if root and Path(root).is_dir():
                files = (str(p) for p in Path(root).rglob("*") if p.name.lower().endswith(endings))
                found += sorted(files)[:MAX_EXAMPLES]
    return list(dict.fromkeys(found))[:MAX_EXAMPLES]


# ---- the page ----------------------------------------------------------------------------------------------------
class WebDemo:
    def __init__(self, captioner: Captioner):
        self.captioner = captioner
        cfg = captioner.cfg.model
        self.by_input = {key: [name for name, m in cfg.modalities.items() if cfg.encoders[m.encoder].input_key == key]
                         for key in ("image", "points")}
        self.generation = cfg.generation

    def default_modality(self, input_key: str) -> Optional[str]:
        names = self.by_input[input_key]
        with_region = [n for n in names if self.captioner.cfg.model.modalities[n].region is not None]
        return (with_region or names or [None])[0]

    def caption(self, modality: str, inputs: Namespace, beams: float, max_len: float) -> tuple[str, str]:
        """(caption, message): one of them is empty."""
        if not modality:
            return "", "Choose a modality."
        try:
            item = input_item(self.captioner.cfg, Namespace(modality=modality, **vars(inputs)))
            min_len = min(self.generation.min_new_tokens, int(max_len))
            text = self.captioner.caption(modality, item, num_beams=int(beams), max_new_tokens=int(max_len),
                                          min_new_tokens=min_len)
        except INPUT_ERRORS as e:
            return "", f"Cannot caption this input: {e}"
        return text, ""

    # image tab
    def load_image(self, path: Optional[str]):
        """(state image, shown image, message); a file that is no image leaves the view empty and says so."""
        if not path:
            return None, None, ""
        try:
            image = load_rgb_image(path)
        except ImageReadError as e:
            return None, None, f"This upload is not an image: {e}"
        shown = draw_box(image, None)
        return path, shown, f"{image.width}x{image.height} image: click two opposite corners of the box on it."

    def click_corner(self, path: Optional[str], pending: Optional[list[int]], evt: gr.SelectData):
        """The first click remembers a corner; the second closes the box and fills the four fields."""
        if not path:
            return gr.skip(), None, gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Upload an image first."
        image = load_rgb_image(path)
        x, y = (int(v) // display_scale(image) for v in evt.index)  # shown pixels -> image pixels
        if pending is None:
            return (draw_box(image, None, (x, y)), [x, y], gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    f"First corner ({x}, {y}): click the opposite corner.")
        box = [min(x, pending[0]), min(y, pending[1]), max(x, pending[0]), max(y, pending[1])]
        return draw_box(image, box), None, *box, f"Box {box[0]} {box[1]} {box[2]} {box[3]} (pixels)."

    def redraw_image(self, path: Optional[str], *values: Optional[float]):
        if not path:
            return gr.skip()
        try:
            box = box_values(list(values), "box", 4)
        except ValueError:
            box = None  # a half-typed box: show the image until the fields are complete
        return draw_box(load_rgb_image(path), box)

    def caption_fields(self, path: Optional[str], upload: str, what: str, count: int, values: tuple,
                       request: Callable[[Path, Optional[list[float]]], Namespace], modality: str, beams: float,
                       max_len: float) -> tuple[str, str]:
        """Either tab's Caption button: the upload (`upload` names it when missing) and its box fields, checked,
        then `request(path, box)` captioned."""
        if not path:
            return "", f"Upload {upload} first."
        try:
            box = box_values(list(values), what, count)
        except ValueError as e:
            return "", str(e)
        return self.caption(modality, request(Path(path), box), beams, max_len)

    def caption_image(self, path: Optional[str], modality: str, beams: float, max_len: float, *values):
        return self.caption_fields(path, "an image", "box", 4, values,
                                   lambda p, box: Namespace(image=p, box=box, points=None, box3d=None),
                                   modality, beams, max_len)

    # point-cloud tab
    def load_cloud(self, path: Optional[str]):
        """(state path, figure, 6 box fields, message)."""
        if not path:
            return None, None, *[gr.skip()] * 6, ""
        try:
            array = read_cloud(path)
        except ValueError as e:
            return None, None, *[None] * 6, f"This upload is not a usable point cloud: {e}"
        box = default_box3d(array)
        return (path, cloud_figure(array, box), *[round(v, 4) for v in box],
                f"{len(array)} points: move the box with its centre and size fields, then press Caption.")

    def redraw_cloud(self, path: Optional[str], *values: Optional[float]):
        if not path:
            return gr.skip()
        try:
            box = box_values(list(values), "3D box", 6)
        except ValueError:
            box = None
        return cloud_figure(read_cloud(path), box)

    def caption_cloud(self, path: Optional[str], modality: str, beams: float, max_len: float, *values):
        return self.caption_fields(path, "a point cloud", "3D box", 6, values,
                                   lambda p, box: Namespace(image=None, box=None, points=p, box3d=box),
                                   modality, beams, max_len)

    def generation_controls(self, prefix: str) -> tuple[gr.Slider, gr.Slider]:
        beams = gr.Slider(1, 10, value=self.generation.num_beams, step=1, label="beams", elem_id=f"{prefix}-beams")
        max_len = gr.Slider(1, 64, value=self.generation.max_new_tokens, step=1, label="max new tokens",
                            elem_id=f"{prefix}-max-len")
        return beams, max_len

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="RegionBLIP demo", analytics_enabled=False) as page:
            gr.Markdown("# RegionBLIP: caption an image, a box, a point cloud or a 3D box")
            with gr.Tab("Image", elem_id="image-tab"):
                self._image_tab()
            with gr.Tab("Point cloud", elem_id="points-tab"):
                self._points_tab()
        return page

    def _image_tab(self) -> None:
        # Two clicks on the image, not Gradio's ImageEditor: a box is exact pixel corners, which a brush stroke's
        # outline is not, the clicks land in image pixels whatever the displayed size, and a test drives them by mouse.
        path = gr.State(None)
        pending = gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="image file", elem_id="image-file", type="filepath")
                examples = example_files(self.captioner.cfg, "image")
                pick = gr.Dropdown(examples, value=None, label="or one of the dataset's images", elem_id="image-pick")
                view = gr.Image(label="click two opposite corners of the box", type="pil", interactive=False,
                                elem_id="image-view", height=420)
            with gr.Column():
                with gr.Row():
                    fields = [gr.Number(label=n, value=None, elem_id=f"box-{n}") for n in ("x1", "y1", "x2", "y2")]
                clear = gr.Button("Clear box (caption the whole image)", elem_id="image-clear")
                modality = gr.Dropdown(self.by_input["image"], value=self.default_modality("image"),
                                       label="modality", elem_id="image-modality")
                beams, max_len = self.generation_controls("image")
                run = gr.Button("Caption", variant="primary", elem_id="image-caption-button")
                caption = gr.Textbox(label="caption", elem_id="image-caption", interactive=False)
                message = gr.Markdown(elem_id="image-message")
        for source in (upload, pick):
            source.change(self.load_image, source, [path, view, message]).then(
                lambda: (None, *[None] * 4), None, [pending, *fields])
        view.select(self.click_corner, [path, pending], [view, pending, *fields, message])
        for field in fields:
            field.input(self.redraw_image, [path, *fields], view)
        clear.click(lambda: (None, *[None] * 4), None, [pending, *fields]).then(self.redraw_image, [path, *fields],
                                                                                 view)
        run.click(self.caption_image, [path, modality, beams, max_len, *fields], [caption, message])

    def _points_tab(self) -> None:
        path = gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="point cloud (.npy / .npz / .ply)", elem_id="points-file", type="filepath")
                examples = example_files(self.captioner.cfg, "points")
                pick = gr.Dropdown(examples, value=None, label="or one of the dataset's clouds", elem_id="points-pick")
                view = gr.Plot(label="the cloud and its 3D box (drag to turn)", elem_id="points-view")
            with gr.Column():
                with gr.Row():
                    fields = [gr.Number(label=n, value=None, elem_id=f"box3d-{n}")
                              for n in ("cx", "cy", "cz", "dx", "dy", "dz")]
                clear = gr.Button("Clear box (caption the whole cloud)", elem_id="points-clear")
                modality = gr.Dropdown(self.by_input["points"], value=self.default_modality("points"),
                                       label="modality", elem_id="points-modality")
                beams, max_len = self.generation_controls("points")
                run = gr.Button("Caption", variant="primary", elem_id="points-caption-button")
                caption = gr.Textbox(label="caption", elem_id="points-caption", interactive=False)
                message = gr.Markdown(elem_id="points-message")
        for source in (upload, pick):
            source.change(self.load_cloud, source, [path, view, *fields, message])
        for field in fields:
            field.input(self.redraw_cloud, [path, *fields], view)
        clear.click(lambda: [None] * 6, None, fields).then(self.redraw_cloud, [path, *fields], view)
        run.click(self.caption_cloud, [path, modality, beams, max_len, *fields], [caption, message])


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        cfg = load_config(args.cfg_path, args.options)
        captioner = load_captioner(cfg, str(args.run), "--run", "the command line")
    except INPUT_ERRORS as e:
        raise SystemExit(f"error: {e}") from None
    page = WebDemo(captioner).build()
    print(f"serving on http://{args.host}:{args.port}", flush=True)
    page.launch(server_name=args.host, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()

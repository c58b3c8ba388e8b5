"""tools/plot_run.py: two runs' logs drawn into one PNG, a panel per modality's loss terms and one for the LR, each
run in its own colour; a folder without a log is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tools import plot_run


def write_log(run, scale: float) -> None:
    run.mkdir()
    lines = [json.dumps({"epoch": None, "stage": "indexing"})]  # not a step record: ignored
    for step in range(10, 110, 10):
        lines.append(json.dumps({"step": step, "epoch": 0, "loss": scale / step, "loss_itc": scale / step,
                                 "image_region/loss_itc": scale / step, "image_region/loss_reg": scale / step / 2,
                                 "pointcloud/loss_llm": scale * 2 / step, "lr": 1e-4 * step / 100}))
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")


def test_two_runs_in_one_png(tmp_path):
    write_log(tmp_path / "stage2", 1.0)
    write_log(tmp_path / "stage2_no_pafe", 3.0)
    shown = plot_run.panels({"a": plot_run.read_log(tmp_path / "stage2")})
    assert shown == {"all modalities": ["loss", "loss_itc"], "image_region": ["image_region/loss_itc",
                     "image_region/loss_reg"], "pointcloud": ["pointcloud/loss_llm"], "learning rate": ["lr"]}
    out = plot_run.main([str(tmp_path / "stage2"), str(tmp_path / "stage2_no_pafe"), "--out", str(tmp_path / "c.png")])
    image = Image.open(out)
    assert image.size == (1650, 760)  # 3 x 2 panels of 5.5 x 3.8 inches at 100 dpi
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # both runs' lines (matplotlib's first two)


def test_refuses_a_folder_without_a_log(tmp_path):
    with pytest.raises(SystemExit, match="no log.jsonl"):
        plot_run.main([str(tmp_path), "--out", str(tmp_path / "c.png")])

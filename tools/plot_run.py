"""Draw the loss terms of each modality and the learning rate of training runs, from their log.jsonl, into one PNG.

    python tools/plot_run.py output/demo/stage2 output/demo/stage2_no_pafe --out curves.png

One panel per modality (its loss terms, e.g. image_region/loss_itc), one for the summed loss and one for the LR; the
runs are overlaid in each panel, one colour per run, labelled by folder name; line style tells the terms apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

LINE_STYLES = ("-", "--", ":", "-.")


def read_log(run: Path) -> list[dict]:
    """The step records of a run's log.jsonl (lines with a numeric step)."""
    path = run / "log.jsonl"
    if not path.is_file():
        raise ValueError(f"{run}: no log.jsonl (is it a training run folder?)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
            if isinstance(record.get("step"), (int, float)):
                records.append(record)
    if not records:
        raise ValueError(f"{path}: no logged steps yet")
    return records


def panels(records_by_run: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Panel title -> the logged keys it shows: each modality's loss terms, the summed terms, the LR."""
    keys = sorted({k for records in records_by_run.values() for r in records for k in r})
    out: dict[str, list[str]] = {}
    for key in keys:
        modality, _, term = key.rpartition("/")
        if term.startswith("loss"):
            out.setdefault(modality or "all modalities", []).append(key)
    if "lr" in keys:
        out["learning rate"] = ["lr"]
    return out


def plot_runs(runs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records_by_run = {}
    for run in runs:
        label = run.resolve().name
        while label in records_by_run:  # two folders of one name: keep both
            label += "'"
        records_by_run[label] = read_log(run)
    shown = panels(records_by_run)
    columns = min(3, len(shown))
    rows = -(-len(shown) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.8 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes.flat, shown.items()):
        for run_index, (label, records) in enumerate(records_by_run.items()):
            for key_index, key in enumerate(keys):
                points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, color=colours[run_index % len(colours)],
                            linestyle=LINE_STYLES[key_index % len(LINE_STYLES)],
                            label=f"{label}: {key.rpartition('/')[2]}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in list(axes.flat)[len(shown):]:
        ax.set_axis_off()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main(argv: Optional[list[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="training run folders")
    parser.add_argument("--out", type=Path, default=Path("run_curves.png"), help="the PNG (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.out)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(path)
    return path


if __name__ == "__main__":
    main()

"""Print the metrics of several evaluation runs side by side, one row per evaluated dataset.

    python tools/metrics_table.py --run before=output/demo/before --run after=output/demo/after \
        [--metrics CIDEr Bleu_4 METEOR ROUGE_L] [--markdown]

Each run directory holds the `{dataset}_{split}_metrics.json` files that evaluate.py writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_run(directory: Path) -> dict[str, dict]:
    if not directory.is_dir():
        raise SystemExit(f"run directory {directory} does not exist")
    reports = {}
    for path in sorted(directory.glob("*_metrics.json")):
        report = json.loads(path.read_text())
        reports[f"{report['dataset']} ({report['modality']}, {report['split']})"] = report
    if not reports:
        raise SystemExit(f"{directory} holds no *_metrics.json (run evaluate.py with run.output_dir={directory})")
    return reports


def table(runs: dict[str, dict[str, dict]], metrics: list[str], markdown: bool) -> str:
    rows = sorted({row for reports in runs.values() for row in reports})
    header = ["dataset"] + [f"{m} {label}" for m in metrics for label in runs]
    lines = []
    for row in rows:
        cells = [row]
        for metric in metrics:
            for reports in runs.values():
                value = reports.get(row, {}).get("metrics", {}).get(metric)
                cells.append("-" if value is None else f"{100 * value:.1f}")
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*cells) for cells in [header, *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    parser.add_argument("--metrics", nargs="+", default=["CIDEr", "Bleu_4", "METEOR", "ROUGE_L"])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        label, sep, directory = item.partition("=")
        if not sep:
            parser.error(f"--run {item}: expected LABEL=DIR")
        runs[label] = read_run(Path(directory))
    print(table(runs, args.metrics, args.markdown))


if __name__ == "__main__":
    main()

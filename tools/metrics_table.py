"""Print the metrics of several evaluation runs side by side, one row per evaluated dataset.

    python tools/metrics_table.py --run before=output/demo/before --run after=output/demo/after \
        [--metrics CIDEr Bleu_4 METEOR ROUGE_L] [--markdown]

Each run directory holds the `{dataset}_{split}_metrics.json` files that evaluate.py writes. A number from a file
that did not score every ground-truth item (`incomplete: true`) is marked `*`, one whose completeness is unknown
(a file written before evaluate.py recorded the counts) `?`; a footnote under the table names the file and counts.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Optional

# what coco_caption_scores put in "missing" before metrics files had the completeness keys
_OLD_UNSCORED = re.compile(r"(\d+) of (\d+) ground-truth images have no result; metrics cover the (\d+) images")
UNKNOWN = ("no completeness counts (written before evaluate.py recorded them): whether every ground-truth item was "
           "scored is unknown; evaluate again to know")


def completeness(report: dict) -> tuple[Optional[bool], str]:
    """(incomplete?, counts) of one metrics file. Files without the `incomplete` key predate it: incomplete when
    their other keys show unscored items, else None (unknown) with UNKNOWN as the reason."""
    if "incomplete" in report:
        counts = f"{report.get('scored_items', '?')} of {report.get('gt_items', '?')} ground-truth items scored"
        if not report["incomplete"]:
            return False, counts
        details = []
        if report.get("missing_items"):
            details.append(f"{report['missing_items']} missing, e.g. {report.get('missing_ids', [])[:5]}")
        if report.get("skipped"):
            details.append(f"{report['skipped']} bad samples skipped")
        return True, counts + (f" ({'; '.join(details)})" if details else "")
    for message in report.get("missing") or []:
        match = _OLD_UNSCORED.search(str(message))
        if match:
            return True, f"{match.group(3)} of {match.group(2)} ground-truth items scored"
    if report.get("skipped"):
        samples, skipped = report.get("samples", "?"), report["skipped"]
        total = samples + skipped if isinstance(samples, int) else "?"
        return True, f"{samples} of {total} samples scored ({skipped} bad samples skipped)"
    return None, UNKNOWN


def read_run(directory: Path) -> dict[str, dict]:
    if not directory.is_dir():
        raise SystemExit(f"run directory {directory} does not exist")
    reports = {}
    for path in sorted(directory.glob("*_metrics.json")):
        report = json.loads(path.read_text())
        reports[f"{report['dataset']} ({report['modality']}, {report['split']})"] = {**report, "_path": str(path)}
    if not reports:
        raise SystemExit(f"{directory} holds no *_metrics.json (run evaluate.py with run.output_dir={directory})")
    return reports


def table(runs: dict[str, dict[str, dict]], metrics: list[str], markdown: bool) -> str:
    rows = sorted({row for reports in runs.values() for row in reports})
    header = ["dataset"] + [f"{m} {label}" for m in metrics for label in runs]
    lines, footnotes = [], {}
    for row in rows:
        cells = [row]
        for metric in metrics:
            for label, reports in runs.items():
                report = reports.get(row, {})
                value = report.get("metrics", {}).get(metric)
                if value is None:
                    cells.append("-")
                    continue
                incomplete, counts = completeness(report)
                mark = "*" if incomplete else "?" if incomplete is None else ""
                cells.append(f"{100 * value:.1f}{mark}")
                if mark:
                    state = "incomplete" if incomplete else "completeness unknown"
                    footnotes[(label, row)] = f"{mark} {label} / {row}: {state}: {counts} ({report['_path']})"
        lines.append(cells)
    notes = list(footnotes.values())
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells).replace("*", r"\*") + " |" for cells in lines]
        return "\n".join(out + ([""] + ["- " + note.replace("*", r"\*", 1) for note in notes] if notes else []))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*cells) for cells in [header, *lines]] + notes)


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

"""Print the metrics of several evaluation runs side by side, one row per evaluated dataset.

    python tools/metrics_table.py --run before=output/demo/before --run after=output/demo/after \
        [--metrics CIDEr Bleu_4 METEOR ROUGE_L] [--markdown]

Each run directory holds the `{dataset}_{split}_metrics.json` files that evaluate.py writes. A number from a file
that did not score every ground-truth item (`incomplete: true`) is marked `*`, one whose completeness is unknown
(a file written before evaluate.py recorded the counts) `?`; a footnote under the table names the file and counts.

Each metrics file records its `provenance` (the checkpoint and the model config it scores). Files that come from one
evaluation folder (symlinks are followed: a group folder of links to several runs' files is fine) must agree on
it, and so must two files that land in one row of one run: otherwise the tool refuses, naming the files and their
checkpoints. A file without provenance (written before evaluate.py recorded it) is read, marked `?` and footnoted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn, Optional

from lavis.common.metrics_files import completeness

NO_PROVENANCE = ("no provenance (written before evaluate.py recorded it): which checkpoint and config it scores is "
                 "unknown; evaluate again to know")


def source_of(report: dict) -> Optional[tuple]:
    """(checkpoint sha256, model config sha256) of a metrics file; None when it records no provenance."""
    provenance = report.get("provenance")
    if not isinstance(provenance, dict):
        return None
    return (provenance.get("checkpoint") or {}).get("sha256"), provenance.get("config_sha256")


def describe_source(report: dict) -> str:
    provenance = report.get("provenance")
    if not isinstance(provenance, dict):
        return "no recorded checkpoint"
    ckpt = provenance.get("checkpoint") or {}
    if ckpt.get("sha256") is None:
        return f"no checkpoint (untrained), model config {str(provenance.get('config_sha256'))[:12]}"
    return (f"checkpoint {ckpt.get('path')} (step {ckpt.get('step')}, sha256 {ckpt['sha256'][:12]}), model config "
            f"{str(provenance.get('config_sha256'))[:12]}")


def refuse_mixed(directory: Path, first: dict, second: dict, where: str) -> NoReturn:
    raise SystemExit(f"{directory}: {first['_path']} and {second['_path']} ({where}) score different (or unknown) "
                     f"checkpoints or configs: {describe_source(first)}, and {describe_source(second)}; one table "
                     "column holds one model. Evaluate into separate run.output_dir folders, or again into this one "
                     "(evaluate.py moves results of another checkpoint to superseded/)")


def read_run(directory: Path) -> dict[str, dict]:
    if not directory.is_dir():
        raise SystemExit(f"run directory {directory} does not exist")
    reports: dict[str, dict] = {}
    by_folder: dict[Path, dict] = {}  # the evaluation folder a file really lies in -> its first file with provenance
    for path in sorted(directory.glob("*_metrics.json")):
        if not path.exists():
            raise SystemExit(f"{path} links to {path.readlink()}, which no longer exists (a rerun of evaluate.py "
                             "with another checkpoint moves results to superseded/): remove the link or link anew")
        report = {**json.loads(path.read_text()), "_path": str(path)}
        row = f"{report['dataset']} ({report['modality']}, {report['split']})"
        if row in reports and (source_of(report) is None or source_of(reports[row]) != source_of(report)):
            refuse_mixed(directory, reports[row], report, f"both row {row}")
        if source_of(report) is not None:
            seen = by_folder.setdefault(path.resolve().parent, report)
            if source_of(seen) != source_of(report):
                refuse_mixed(directory, seen, report, f"both from {path.resolve().parent}")
        reports[row] = report
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
                unsourced = source_of(report) is None
                cells.append(f"{100 * value:.1f}{mark}{'?' if unsourced and mark != '?' else ''}")
                if mark:
                    state = "incomplete" if incomplete else "completeness unknown"
                    footnotes[(label, row)] = f"{mark} {label} / {row}: {state}: {counts} ({report['_path']})"
                if unsourced:
                    footnotes[(label, row, "provenance")] = f"? {label} / {row}: {NO_PROVENANCE} ({report['_path']})"
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

"""Print our metrics beside the published numbers of other systems on the same protocol, each with its source.

    python tools/compare_published.py output/eval_protocols [more run dirs or metrics files] [--protocol NAME]

Each argument is a metrics file (evaluate.py's `{dataset}_{split}_metrics.json` or tools/eval_dense_captions.py's
output) or a run directory, searched for `*_metrics.json` (superseded/ is left out). Protocols (numbers in
tools/published_results.yaml, mapping in lavis/common/published_results.py): regionblip_table1,
refcocog_region_captioning, scanrefer_densecap_0.5. Without --protocol, every protocol that one of the files fills.
Our values are x100; `*` marks a file that did not score every ground-truth item, `gt` dense captions of the
ground-truth boxes (not detected proposals).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from lavis.common.published_results import (
    PROTOCOLS,
    PublishedResultsError,
    check_protocol,
    load_published,
    metrics_files,
    our_values,
)

DEFAULT_YAML = Path(__file__).with_name("published_results.yaml")


def protocol_table(name: str, published: dict, runs: dict[str, dict]) -> str:
    protocol = PROTOCOLS[name]
    rows = [("metric", "system", "value", "source")]
    for metric in protocol.metrics:
        for label, values in runs.items():
            if metric in values:
                ours = values[metric]
                rows.append((metric, f"ours ({label})", f"{ours.value:.2f}{ours.mark and ' ' + ours.mark}",
                             ours.path))
        for entry in published.get(name, {}).get(metric, []):
            source = entry["source"] + (f"; {entry['note']}" if entry.get("note") else "")
            rows.append((metric, entry["system"], f"{float(entry['value']):.2f}", source))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"== {name}: {protocol.title}"]
    lines += ["  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3]])
              for row in rows]
    return "\n".join(lines + ([f"note: {protocol.note}"] if protocol.note else []))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="METRICS_FILE_OR_RUN_DIR")
    parser.add_argument("--protocol", help=f"one of {', '.join(PROTOCOLS)} (default: every one our files fill)")
    parser.add_argument("--published", default=str(DEFAULT_YAML), help="the published-results YAML")
    args = parser.parse_args(argv)
    try:
        names = [args.protocol] if args.protocol else list(PROTOCOLS)
        for name in names:
            check_protocol(name)
        published = load_published(args.published)
        files = {source: metrics_files(source) for source in args.sources}
        tables = []
        for name in names:
            runs = {source: our_values(name, paths) for source, paths in files.items()}
            if args.protocol or any(runs.values()):
                tables.append(protocol_table(name, published, runs))
    except PublishedResultsError as error:
        parser.error(str(error))
    if not tables:
        parser.error(f"none of {args.sources} holds a metric of the protocols {', '.join(PROTOCOLS)}")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()

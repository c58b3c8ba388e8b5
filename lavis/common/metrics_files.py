"""Reading the metrics files evaluate.py writes (`{dataset}_{split}_metrics.json`), for the tools that tabulate them
(tools/metrics_table.py, tools/compare_table1.py)."""

from __future__ import annotations

import re
from typing import Optional

# what coco_caption_scores put in "missing" before metrics files had the completeness keys
_OLD_UNSCORED = re.compile(r"(\d+) of (\d+) ground-truth (?:images|samples) have no result; metrics cover the (\d+) "
                           r"(?:images|samples)")
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

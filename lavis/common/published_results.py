"""Published numbers of other systems, per evaluation protocol, and how our metrics files map onto them.

`tools/published_results.yaml` holds the numbers (protocol -> metric -> [{system, value, source}], values as the
papers print them, x100); `PROTOCOLS` below says, for each protocol, which of our metrics files and keys fill each
metric. A metric or protocol in the YAML that `PROTOCOLS` does not know is refused, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

ENTRY_KEYS = {"system", "value", "source"}
OPTIONAL_KEYS = {"note"}
# dataset families, longest names first: "refcocog" must not be read as "refcoco", nor "refcoco" as "coco"
FAMILIES = ("refcocog", "refcoco+", "refcoco", "objaverse", "scanrefer", "vqav2", "coco")


class PublishedResultsError(ValueError):
    """A malformed published-results file, an unknown protocol, or metrics files that cannot be tabulated."""


@dataclass(frozen=True)
class Metric:
    """Where our value of one published metric comes from: an evaluate.py file (family + split) or a dense-caption
    file of tools/eval_dense_captions.py (`dense`), and its key in the file's `metrics` (a fraction; shown x100)."""
    key: str
    family: Optional[str] = None
    split: Optional[str] = None
    dense: bool = False


@dataclass(frozen=True)
class Protocol:
    title: str
    metrics: dict[str, Metric]
    note: str = ""


def _table1() -> dict[str, Metric]:
    cells = {"VQAv2 val2014 accuracy": Metric("accuracy", "vqav2", "val2014")}
    for name, family, split in (("COCO Karpathy test", "coco", "test"), ("RefCOCO test", "refcoco", "test"),
                                ("Objaverse test", "objaverse", "test"), ("ScanRefer val", "scanrefer", "val")):
        for key in ("CIDEr", "SPICE"):
            cells[f"{name} {key}"] = Metric(key, family, split)
    return cells


PROTOCOLS = {
    "regionblip_table1": Protocol("RegionBLIP Table 1 (captioning of ground-truth regions, CIDEr / SPICE x100)",
                                  _table1()),
    "refcocog_region_captioning": Protocol(
        "RefCOCOg (umd) val region captioning, METEOR / CIDEr x100",
        {"RefCOCOg val METEOR": Metric("METEOR", "refcocog", "val"),
         "RefCOCOg val CIDEr": Metric("CIDEr", "refcocog", "val")}),
    "scanrefer_densecap_0.5": Protocol(
        "ScanRefer val 3D dense captioning, m@0.5IoU x100 (Scan2Cap's metric)",
        {"CIDEr@0.5": Metric("CIDEr@0.5", dense=True), "BLEU-4@0.5": Metric("Bleu_4@0.5", dense=True),
         "METEOR@0.5": Metric("METEOR@0.5", dense=True), "ROUGE_L@0.5": Metric("ROUGE_L@0.5", dense=True)},
        note="published systems caption their own detected proposals; ours with --proposals gt captions the "
             "ground-truth boxes (an upper bound), so the rows are not like for like"),
}


def _entry_problem(entry: Any) -> Optional[str]:
    if not isinstance(entry, dict):
        return f"expected a mapping {{system, value, source}}, got {entry!r}"
    missing, unknown = ENTRY_KEYS - entry.keys(), entry.keys() - ENTRY_KEYS - OPTIONAL_KEYS
    if missing or unknown:
        return f"keys {sorted(entry)}: missing {sorted(missing)}, unknown {sorted(unknown)}"
    if not isinstance(entry["system"], str) or not entry["system"].strip():
        return "'system' must be a non-empty string"
    if isinstance(entry["value"], bool) or not isinstance(entry["value"], (int, float)):
        return f"'value' must be a number, got {entry['value']!r}"
    if not isinstance(entry["source"], str) or not entry["source"].strip():
        return "'source' must be a non-empty string (the paper table or repository file the number is from)"
    return None


def load_published(path: str | Path) -> dict[str, dict[str, list[dict]]]:
    """The YAML, checked: every protocol and metric known to PROTOCOLS, every entry {system, value, source}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PublishedResultsError(f"{path}: cannot read published results: {error}") from None
    if not isinstance(data, dict):
        raise PublishedResultsError(f"{path}: expected a mapping protocol -> metric -> list of entries")
    for protocol, metrics in data.items():
        if protocol not in PROTOCOLS:
            raise PublishedResultsError(f"{path}: unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
        if not isinstance(metrics, dict):
            raise PublishedResultsError(f"{path}: {protocol}: expected a mapping metric -> list of entries")
        for metric, entries in metrics.items():
            if metric not in PROTOCOLS[protocol].metrics:
                raise PublishedResultsError(f"{path}: {protocol}: unknown metric '{metric}'; known: "
                                            f"{', '.join(PROTOCOLS[protocol].metrics)}")
            if not isinstance(entries, list) or not entries:
                raise PublishedResultsError(f"{path}: {protocol} / {metric}: expected a non-empty list of entries")
            for k, entry in enumerate(entries):
                problem = _entry_problem(entry)
                if problem:
                    raise PublishedResultsError(f"{path}: {protocol} / {metric} entry {k}: {problem}")
    return data


def metrics_files(source: str | Path) -> list[Path]:
    """A metrics file itself, or every *_metrics.json under a run directory (not under superseded/)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise PublishedResultsError(f"{source}: no such metrics file or run directory")
    files = sorted(p for p in source.rglob("*_metrics.json") if "superseded" not in p.relative_to(source).parts)
    if not files:
        raise PublishedResultsError(f"{source}: holds no *_metrics.json (evaluate.py or eval_dense_captions.py "
                                    "output)")
    return files


def family(dataset: str) -> Optional[str]:
    return next((name for name in FAMILIES if name in dataset.lower()), None)


def _fits(report: dict, metric: Metric) -> bool:
    if metric.dense:
        return "matched_objects" in report and metric.key in report.get("metrics", {})
    return (family(str(report.get("dataset", ""))) == metric.family and report.get("split") == metric.split
            and metric.key in report.get("metrics", {}))


@dataclass(frozen=True)
class Ours:
    value: float  # x100
    path: str
    mark: str  # "*": the file did not score every ground-truth item; "gt": dense captions of ground-truth boxes


def our_values(protocol: str, files: list[Path]) -> dict[str, Ours]:
    """metric -> our value from `files` (one run); two files filling one metric are refused."""
    found: dict[str, Ours] = {}
    for path in files:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise PublishedResultsError(f"{path}: not a metrics JSON: {error}") from None
        for name, metric in PROTOCOLS[protocol].metrics.items():
            if not isinstance(report, dict) or not _fits(report, metric):
                continue
            if name in found:
                raise PublishedResultsError(f"{found[name].path} and {path} both give {protocol} / {name}; pass "
                                            "one of them")
            mark = "*" if report.get("incomplete") else "gt" if report.get("proposals") == "gt" else ""
            found[name] = Ours(100 * float(report["metrics"][metric.key]), str(path), mark)
    return found


def check_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise PublishedResultsError(f"unknown protocol '{name}'; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]

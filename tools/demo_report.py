"""What the demo's numbers mean, from the evaluation runs under the demo's output directory:

    python tools/demo_report.py output/demo [--json] [--check]

  * distinct captions per evaluated dataset and run: a model that ignores its input writes one caption for every
    sample (its language prior), whatever its CIDEr;
  * the three things the demo must show, each a check with its numbers:
      learned     every dataset's CIDEr after training (stage 2, or stage 1 for the image path) is at least 3x its
                  untrained value and at least 50 CIDEr points above it;
      pafe        for every region modality (a `region` in stage 2's model config), CIDEr with PaFE beats PaFE off;
      image path  the image path's captions after stage 2 equal those after stage 1, caption for caption (the frozen
                  BLIP-2 path must not move while regions and point clouds are added).
With --check the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

RUNS = ("untrained", "after_stage1", "after_stage2", "after_stage2_no_pafe")
MIN_RATIO, MIN_GAIN = 3.0, 0.5  # "learned": at least 3x the untrained CIDEr and 50 points (x100) above it


def captions(run: Path) -> dict[str, dict[str, str]]:
    """dataset stem -> {sample id: caption} for every `*_captions.json` of an evaluation run."""
    out = {}
    for path in sorted(run.glob("*_captions.json")):
        out[path.name.removesuffix("_captions.json")] = {str(r["image_id"]): r["caption"] for r in
                                                         json.loads(path.read_text())}
    return out


def metric_reports(run: Path) -> dict[str, dict]:
    """dataset stem -> the `*_metrics.json` report (metrics, modality, ...) of an evaluation run."""
    return {path.name.removesuffix("_metrics.json"): json.loads(path.read_text())
            for path in sorted(run.glob("*_metrics.json"))}


def region_datasets(run: Path, reports: dict[str, dict]) -> list[str]:
    """Dataset stems of an evaluation run whose modality has a region, from the run's resolved config."""
    config = yaml.safe_load((run / "eval_config.yaml").read_text())
    modalities = config["model"]["modalities"]
    return [stem for stem, r in reports.items() if modalities.get(r["modality"], {}).get("region")]


def checks(runs: dict[str, Path], result: dict, stage2_reports: dict[str, dict]) -> list[dict]:
    cider = {name: {ds: m.get("CIDEr", 0.0) for ds, m in per_ds.items()} for name, per_ds in result["metrics"].items()}
    out = []
    if "untrained" in runs:
        for ds, before in cider["untrained"].items():
            trained = next((cider[r][ds] for r in ("after_stage2", "after_stage1") if ds in cider.get(r, {})), None)
            if trained is not None:
                ok = trained >= MIN_RATIO * before and trained >= before + MIN_GAIN
                out.append({"check": "learned", "dataset": ds, "untrained": before, "trained": trained, "ok": ok})
    if "after_stage2" in runs and "after_stage2_no_pafe" in runs:
        for ds in region_datasets(runs["after_stage2"], stage2_reports):
            on, off = cider["after_stage2"][ds], cider["after_stage2_no_pafe"].get(ds)
            if off is not None:
                out.append({"check": "pafe", "dataset": ds, "pafe_on": on, "pafe_off": off, "ok": on > off})
    for ds, same in result.get("image_path_unchanged", {}).items():
        out.append({"check": "image path", "dataset": ds, "ok": same})
    return out


def report(root: Path) -> dict:
    runs = {name: root / name for name in RUNS if (root / name).is_dir()}
    result: dict = {"distinct_captions": {}, "samples": {}, "metrics": {}}
    caps = {name: captions(run) for name, run in runs.items()}
    reports = {name: metric_reports(run) for name, run in runs.items()}
    for name in runs:
        result["distinct_captions"][name] = {ds: len(set(c.values())) for ds, c in caps[name].items()}
        result["samples"][name] = {ds: len(c) for ds, c in caps[name].items()}
        result["metrics"][name] = {ds: r["metrics"] for ds, r in reports[name].items()}
    if "after_stage1" in runs and "after_stage2" in runs:
        before, after = caps["after_stage1"], caps["after_stage2"]
        result["image_path_unchanged"] = {ds: before[ds] == after.get(ds) for ds in before}
    result["checks"] = checks(runs, result, reports.get("after_stage2", {}))
    return result


def describe(check: dict) -> str:
    if check["check"] == "learned":
        return f"CIDEr {100 * check['untrained']:.1f} untrained -> {100 * check['trained']:.1f} trained"
    if check["check"] == "pafe":
        return f"CIDEr {100 * check['pafe_on']:.1f} with PaFE vs {100 * check['pafe_off']:.1f} without"
    return "captions after stage 2 " + ("identical to" if check["ok"] else "DIFFER from") + " stage 1's"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    args = parser.parse_args(argv)
    result = report(args.root)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("\ndistinct captions / samples (a model that ignores its input writes 1):")
        for name, per_ds in result["distinct_captions"].items():
            cells = ", ".join(f"{ds} {n}/{result['samples'][name][ds]}" for ds, n in per_ds.items())
            print(f"  {name:<22} {cells}")
        print("\nwhat the demo must show:")
        for check in result["checks"]:
            verdict = "ok  " if check["ok"] else "FAIL"
            print(f"  {verdict} {check['check']:<10} {check['dataset']:<16} {describe(check)}")
    if args.check and not all(c["ok"] for c in result["checks"]):
        sys.exit(1)

if __name__ == "__main__":
    main()

"""What the demo's numbers mean, from the evaluation runs under the demo's output directory:

    python tools/demo_report.py output/demo [--json]

  * distinct captions per evaluated dataset and run: a model that ignores its input writes one caption for every
    sample (its language prior), whatever its CIDEr;
  * whether the image path's captions after stage 2 equal those after stage 1, caption for caption (the frozen
    BLIP-2 path must not move while regions and point clouds are added).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNS = ("untrained", "after_stage1", "after_stage2", "after_stage2_no_pafe")


def captions(run: Path) -> dict[str, dict[str, str]]:
    """dataset stem -> {sample id: caption} for every `*_captions.json` of an evaluation run."""
    out = {}
    for path in sorted(run.glob("*_captions.json")):
        out[path.name.removesuffix("_captions.json")] = {str(r["image_id"]): r["caption"] for r in
                                                         json.loads(path.read_text())}
    return out


def metrics(run: Path) -> dict[str, dict[str, float]]:
    out = {}
    for path in sorted(run.glob("*_metrics.json")):
        out[path.name.removesuffix("_metrics.json")] = json.loads(path.read_text())["metrics"]
    return out


def report(root: Path) -> dict:
    runs = {name: root / name for name in RUNS if (root / name).is_dir()}
    result: dict = {"distinct_captions": {}, "samples": {}, "metrics": {}}
    for name, run in runs.items():
        caps = captions(run)
        result["distinct_captions"][name] = {ds: len(set(c.values())) for ds, c in caps.items()}
        result["samples"][name] = {ds: len(c) for ds, c in caps.items()}
        result["metrics"][name] = metrics(run)
    if "after_stage1" in runs and "after_stage2" in runs:
        before, after = captions(runs["after_stage1"]), captions(runs["after_stage2"])
        result["image_path_unchanged"] = {ds: before[ds] == after.get(ds) for ds in before}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = report(args.root)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print("\ndistinct captions / samples (a model that ignores its input writes 1):")
    for name, per_ds in result["distinct_captions"].items():
        cells = ", ".join(f"{ds} {n}/{result['samples'][name][ds]}" for ds, n in per_ds.items())
        print(f"  {name:<22} {cells}")
    for ds, same in result.get("image_path_unchanged", {}).items():
        print(f"image path {ds}: captions after stage 2 {'identical to' if same else 'DIFFER from'} stage 1's")


if __name__ == "__main__":
    main()

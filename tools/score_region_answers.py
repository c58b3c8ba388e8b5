"""Score generated answers to instruction JSONL questions: exact match, the named shape and colour, and CIDEr.

    python tools/score_region_answers.py --run "mask2d=output/demo_regions/eval_overlap_mask" \
        --run "box2d=output/demo_regions/eval_overlap_box" [--markdown] [--out table.md]

Each run directory is an evaluate.py output folder: its `eval_config.yaml` names each instruction dataset's JSONL
(`datasets.<name>.files.<eval_split>`), its `{name}_{split}_captions.json` the generated answers by sample id. The
references are read back through the instruction dataset's own reader (one sample per answered turn), so sample ids
and answers are the ones evaluation saw. Per dataset and run:
  exact      answer == reference after BLIP's caption cleaning (lower case, . ! " ( ) * # : ; ~ dropped) and
             with trailing commas / question marks stripped
  by kind    exact match per question template (the instruction with its placeholders, e.g. "Is <region> left of
             <region>?"), so untrained-vs-trained differences show per kind of question
  colour / shape (datasets whose every instruction starts with "Describe", answers "<colour> <shape>", e.g.
             "red ring"): the reference's first word as the answer's first word, and the rest of it found in the
             answer as a whole word or phrase; accuracy of each
  by group   exact match per group of the record id (`--group`, a regex with a group named `g`; default: the
             overlap pair of tools/make_synthetic_world.py's ids, e.g. ring_cross)
  CIDEr      COCO CIDEr of the answers against the references (lavis/common/caption_metrics.py; needs Java),
             for the "Describe" datasets
--majority LABEL adds a baseline row per dataset: each question answered with its most frequent answer in the
training split, which is what a model that ignores its regions can reach. Writes a markdown table with
--markdown (to --out, or stdout).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from lavis.common.caption_metrics import CaptionMetricsConfig, coco_caption_scores
from lavis.datasets.datasets.instructions import instruction_samples, read_instruction_jsonl
from lavis.processors.text_processors import clean_caption

DEFAULT_GROUP = r"_(?P<g>[a-z]+_[a-z]+)_\d+$"  # overlap00012_ring_cross_1 -> ring_cross


def normalise(text: str) -> str:
    return clean_caption(text, 50).strip(" ,?")


def references(jsonl: Path, region_token: str) -> dict[str, tuple[str, str, str]]:
    """sample id -> (instruction, answer, record id) as the instruction dataset reads them."""
    with jsonl.open() as f:
        first = json.loads(next(line for line in f if line.strip()))
    media_key = "image" if "image" in first else "points"
    records, _ = read_instruction_jsonl(jsonl, media_key)
    samples, _ = instruction_samples(records, region_token)
    return {s.sample_id: (s.instruction, s.answer, s.sample_id.rsplit("#", 1)[0]) for s in samples}


def is_described(instructions: list[str], answers: list[str]) -> bool:
    """Whether every sample is "Describe ..." -> "<colour> <shape>" (two or more words)."""
    return all(i.lower().startswith("describe") for i in instructions) and all(len(a.split()) >= 2 for a in answers)


def contains(answer: str, phrase: str) -> bool:
    return re.search(rf"(^| ){re.escape(phrase)}( |$)", answer) is not None


def score_dataset(captions: list[dict], refs: dict[str, tuple[str, str, str]], group: re.Pattern,
                  cider: bool) -> dict[str, Any]:
    predicted = {str(c["image_id"]): normalise(c["caption"]) for c in captions}
    unknown = sorted(set(predicted) - set(refs))
    if unknown:
        raise SystemExit(f"{len(unknown)} answers have no reference sample, e.g. {unknown[:3]}")
    ids = sorted(predicted)
    truth = {i: normalise(refs[i][1]) for i in ids}
    hits = {i: predicted[i] == truth[i] for i in ids}
    report: dict[str, Any] = {"samples": len(ids), "missing": len(refs) - len(ids),
                              "exact": _mean(hits.values())}
    kinds: dict[str, list[bool]] = defaultdict(list)
    groups: dict[str, list[bool]] = defaultdict(list)
    for i in ids:
        kinds[refs[i][0]].append(hits[i])
        found = group.search(refs[i][2])
        if found:
            groups[found.group("g")].append(hits[i])
    report["by_kind"] = {k: (_mean(v), len(v)) for k, v in sorted(kinds.items())}
    report["by_group"] = {g: (_mean(v), len(v)) for g, v in sorted(groups.items())}
    if is_described([refs[i][0] for i in ids], [truth[i] for i in ids]):
        report["colour"] = _mean(predicted[i].split()[:1] == truth[i].split()[:1] for i in ids)
        report["shape"] = _mean(contains(predicted[i], " ".join(truth[i].split()[1:])) for i in ids)
        if cider:
            gt = {"images": [{"id": i} for i in ids],
                  "annotations": [{"image_id": i, "id": n, "caption": truth[i]} for n, i in enumerate(ids)]}
            results = [{"image_id": i, "caption": predicted[i] or "-"} for i in ids]
            report["CIDEr"] = coco_caption_scores(results, gt, CaptionMetricsConfig(spice=False)).metrics["CIDEr"]
    return report


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def instruction_sets(directory: Path) -> tuple[str, dict[str, Any]]:
    """(region token, {dataset name: its config}) of the evaluated instruction datasets of an evaluate.py folder."""
    config = directory / "eval_config.yaml"
    if not config.is_file():
        raise SystemExit(f"{directory} has no eval_config.yaml: not an evaluate.py output folder")
    cfg = OmegaConf.load(config)
    found = {name: ds for name, ds in cfg.datasets.items()
             if ds.get("eval_split") and ds.get("files") and ds.eval_split in ds.files}
    return str(cfg.model.get("region_token", "<region>")), found


def score_run(directory: Path, group: re.Pattern, cider: bool) -> dict[str, dict[str, Any]]:
    region_token, sets = instruction_sets(directory)
    reports = {}
    for name, ds in sets.items():
        answers = directory / f"{name}_{ds.eval_split}_captions.json"
        if not answers.is_file():
            raise SystemExit(f"{answers} is missing: was {directory} evaluated?")
        reports[name] = score_dataset(json.loads(answers.read_text()),
                                      references(Path(ds.files[ds.eval_split]), region_token), group, cider)
    return reports


def score_majority(directory: Path, group: re.Pattern, cider: bool) -> dict[str, dict[str, Any]]:
    """The baseline that answers each question with its most frequent answer in the training split (no image)."""
    region_token, sets = instruction_sets(directory)
    reports = {}
    for name, ds in sets.items():
        if not ds.get("train_split") or ds.train_split not in ds.files:
            continue
        counts: dict[str, Counter] = defaultdict(Counter)
        for instruction, answer, _ in references(Path(ds.files[ds.train_split]), region_token).values():
            counts[instruction][normalise(answer)] += 1
        refs = references(Path(ds.files[ds.eval_split]), region_token)
        guesses = [{"image_id": sid, "caption": counts[instruction].most_common(1)[0][0] if counts[instruction]
                    else "-"} for sid, (instruction, _, _) in refs.items()]
        reports[name] = score_dataset(guesses, refs, group, cider)
    return reports


def table(runs: list[tuple[str, dict[str, dict[str, Any]]]], markdown: bool) -> str:
    """One table per dataset: a row per run; columns exact, colour / shape / CIDEr where scored, then per kind of
    question (or group)."""
    out: list[str] = []
    datasets = list(dict.fromkeys(name for _, reports in runs for name in reports))
    for name in datasets:
        rows = [(label, reports[name]) for label, reports in runs if name in reports]
        first = rows[0][1]
        extra = [k for k in ("shape", "colour", "CIDEr") if k in first]
        kinds = list(first["by_kind"]) if len(first["by_kind"]) > 1 else []
        groups = list(first["by_group"])
        head = ["run", "samples", "exact", *extra, *(_short(k) for k in kinds), *(f"exact {g}" for g in groups)]
        body = []
        for label, r in rows:
            cells = [label, str(r["samples"]), _pct(r["exact"]), *(_pct(r.get(k)) for k in extra)]
            cells += [_pct(r["by_kind"].get(k, (None,))[0]) for k in kinds]
            cells += [_pct(r["by_group"].get(g, (None,))[0]) for g in groups]
            body.append(cells)
        out.append(f"{'### ' if markdown else ''}{name}" + ("" if markdown else ":"))
        if markdown:
            out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(cells) + " |" for cells in body]
        else:
            widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
            out += ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) for cells in [head, *body]]
        out.append("")
    return "\n".join(out)


def _short(kind: str) -> str:
    """A question template as a column name: its words, placeholders as R."""
    return kind.replace("<region>", "R").rstrip("?.")


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                        help="an evaluate.py output folder, with the label of its table row")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="regex with a group `g` over the record ids")
    parser.add_argument("--no-cider", action="store_true", help="skip CIDEr (it needs Java)")
    parser.add_argument("--majority", metavar="LABEL", help="first, a row of this label per dataset: each question "
                        "answered with its most frequent training answer (the train split of the run's config)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every score as JSON here")
    parser.add_argument("--out", type=Path, help="write the table here instead of stdout")
    args = parser.parse_args(argv)
    runs = []  # a label may repeat: rows of different datasets
    for spec in args.run:
        label, sep, directory = spec.partition("=")
        if not sep:
            parser.error(f"--run {spec}: expected LABEL=DIR")
        runs.append((label, score_run(Path(directory), re.compile(args.group), not args.no_cider)))
    if args.majority:  # per dataset, from the first run that evaluated it
        baseline: dict[str, dict[str, Any]] = {}
        for spec in args.run:
            for name, report in score_majority(Path(spec.partition("=")[2]), re.compile(args.group),
                                               not args.no_cider).items():
                baseline.setdefault(name, report)
        runs.insert(0, (args.majority, baseline))
    text = table(runs, args.markdown)
    if args.json:
        args.json.write_text(json.dumps([{"run": label, "datasets": r} for label, r in runs], indent=1))
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()

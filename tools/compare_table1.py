"""Print our captioning CIDEr next to the RegionBLIP paper's Table 1 (rows: LLMs; columns: RefCOCO test, Objaverse
test, ScanRefer val), with the differences.

Input: metrics files as evaluate.py writes them, `<output_dir>/<dataset>_<split>_metrics.json`, a JSON object with
    "dataset": the dataset's name in the run YAML; its column is the first of refcoco / objaverse / scanrefer that
               the name contains (case-insensitive), e.g. "refcoco", "objaverse_cap3d", "scanrefer_val";
    "metrics": {"CIDEr": 0.635, ...} as pycocoevalcap gives them (fractions; shown x100 like the paper);
    optional "split" (shown when it differs from the paper's split), "model", "task", and other keys (ignored).
Each file is given with the LLM of its row:
    python tools/compare_table1.py --result opt2.7b=out/refcoco/refcoco_test_metrics.json \
        --result opt2.7b=out/objaverse/objaverse_cap3d_test_metrics.json --result flant5xl=...
LLM names: opt2.7b, opt6.7b, flant5xl, flant5xxl (case, '-' and '_' ignored). Cells without a file show "-".

A file that did not score every ground-truth item ("incomplete": true, or an older file whose "missing" / "skipped"
show it) is refused: its cell shows "refused", the error names the file and its counts, and the exit status is 1.
With --allow-incomplete it is shown marked "*". A file without the completeness keys (written before evaluate.py
recorded them) is shown marked "?" with a note: its completeness is unknown.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lavis.common.metrics_files import completeness

ROWS = {"opt2.7b": "OPT-2.7B", "opt6.7b": "OPT-6.7B", "flant5xl": "FlanT5-XL", "flant5xxl": "FlanT5-XXL"}
COLUMNS = {"refcoco": ("RefCOCO", "test"), "objaverse": ("Objaverse", "test"), "scanrefer": ("ScanRefer", "val")}
PAPER_CIDER = {  # RegionBLIP paper, Table 1 (CIDEr x100)
    "opt2.7b": {"refcoco": 63.5, "objaverse": 112.7, "scanrefer": 57.0},
    "opt6.7b": {"refcoco": 64.2, "objaverse": 113.6, "scanrefer": 59.3},
    "flant5xl": {"refcoco": 47.6, "objaverse": 108.1, "scanrefer": 59.2},
    "flant5xxl": {"refcoco": 56.1, "objaverse": 109.0, "scanrefer": 53.6},
}
CELL_WIDTH = 24


def row_key(llm: str) -> str:
    key = llm.lower().replace("-", "").replace("_", "")
    if key not in ROWS:
        raise ValueError(f"unknown LLM '{llm}'; use one of {', '.join(ROWS)}")
    return key


def column_key(dataset: str, source: str) -> str:
    for key in COLUMNS:
        if key in dataset.lower():
            return key
    raise ValueError(f"{source}: dataset '{dataset}' names none of {', '.join(COLUMNS)}, so it has no Table 1 column")


@dataclass
class Completeness:
    path: str
    incomplete: Optional[bool]  # None: the file does not say
    counts: str
    skipped: int  # bad samples skipped during evaluation


def load_results(pairs: list[str]) -> tuple[dict[tuple[str, str], float], list[str]]:
    """(row, column) -> our CIDEr x100, and notes (e.g. a split other than the paper's)."""
    cells, notes, _ = read_results(pairs)
    return cells, notes


def read_results(pairs: list[str]
                 ) -> tuple[dict[tuple[str, str], float], list[str], dict[tuple[str, str], Completeness]]:
    """load_results, plus how completely each file covers its ground truth."""
    cells: dict[tuple[str, str], float] = {}
    sources: dict[tuple[str, str], str] = {}
    notes = []
    status: dict[tuple[str, str], Completeness] = {}
    for pair in pairs:
        llm, sep, path = pair.partition("=")
        if not sep or not path:
            raise ValueError(f"--result '{pair}': expected LLM=path, e.g. opt2.7b=out/refcoco_test_metrics.json")
        data = json.loads(Path(path).read_text())
        if "CIDEr" not in data.get("metrics", {}):
            raise ValueError(f"{path}: no metrics.CIDEr (keys: {sorted(data.get('metrics', {}))})")
        cell = (row_key(llm), column_key(str(data.get("dataset", "")), path))
        if cell in cells:
            raise ValueError(f"{path} and {sources[cell]} both fill the {ROWS[cell[0]]} / {COLUMNS[cell[1]][0]} cell")
        cells[cell], sources[cell] = 100 * float(data["metrics"]["CIDEr"]), path
        status[cell] = Completeness(path, *completeness(data), int(data.get("skipped") or 0))
        split = data.get("split")
        if split and split != COLUMNS[cell[1]][1]:
            notes.append(f"{ROWS[cell[0]]} / {COLUMNS[cell[1]][0]}: scored on split '{split}', the paper reports "
                         f"'{COLUMNS[cell[1]][1]}' ({path})")
    return cells, notes, status


def format_cell(ours: Optional[float], paper: float, mark: str = "") -> str:
    if ours is None:
        return f"- / {paper:.1f}"
    if mark == "refused":
        return f"refused / {paper:.1f}"
    return f"{ours:.1f}{mark} / {paper:.1f} ({ours - paper:+.1f})"


def cell_name(cell: tuple[str, str]) -> str:
    return f"{ROWS[cell[0]]} / {COLUMNS[cell[1]][0]}"


def refusal(cell: tuple[str, str], state: Completeness) -> str:
    if state.skipped:
        bad_samples = Path(state.path).name.removesuffix("_metrics.json") + "_bad_samples.jsonl"
        fix = f"fix the bad samples listed in {bad_samples} beside it"
    else:
        fix = "check that the eval split and its eval_gt_file hold the same items"
    return (f"{cell_name(cell)}: {state.path} is incomplete: {state.counts}, so its CIDEr is not comparable with the "
            f"paper's full-set number. To fix: {fix}, and evaluate again; or pass --allow-incomplete to show the "
            "cell marked *")


def marks_and_notes(status: dict[tuple[str, str], Completeness], allow_incomplete: bool
                    ) -> tuple[dict[tuple[str, str], str], list[str]]:
    """The mark of each cell ("", "*", "?" or "refused") and the notes that explain the marks."""
    marks, notes = {}, []
    for cell, state in status.items():
        if state.incomplete is None:
            marks[cell] = "?"
            notes.append(f"? {cell_name(cell)}: completeness unknown: {state.path} has {state.counts}")
        elif state.incomplete and allow_incomplete:
            marks[cell] = "*"
            notes.append(f"* {cell_name(cell)}: incomplete: {state.counts} ({state.path}); not comparable with "
                         "the paper's full-set number")
        elif state.incomplete:
            marks[cell] = "refused"
            notes.append(f"refused {cell_name(cell)}: incomplete: {state.counts} ({state.path})")
    return marks, notes


def format_table(cells: dict[tuple[str, str], float], notes: list[str] = (),
                 marks: Optional[dict[tuple[str, str], str]] = None) -> str:
    header = ["LLM".ljust(12)] + [f"{name} {split} CIDEr".ljust(CELL_WIDTH) for name, split in COLUMNS.values()]
    lines = ["RegionBLIP Table 1: ours / paper (ours - paper)", "  ".join(header).rstrip()]
    for row, label in ROWS.items():
        values = [format_cell(cells.get((row, column)), PAPER_CIDER[row][column],
                              (marks or {}).get((row, column), "")).ljust(CELL_WIDTH)
                  for column in COLUMNS]
        lines.append("  ".join([label.ljust(12)] + values).rstrip())
    return "\n".join(lines + [f"note: {note}" for note in notes])


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", action="append", default=[], metavar="LLM=PATH",
                        help="a metrics.json and the LLM of its row; repeat for each file")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="show cells whose metrics file did not score every ground-truth item, marked *")
    args = parser.parse_args(argv)
    try:
        cells, notes, status = read_results(args.result)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    marks, mark_notes = marks_and_notes(status, args.allow_incomplete)
    print(format_table(cells, notes + mark_notes, marks))
    refused = [refusal(cell, status[cell]) for cell, mark in marks.items() if mark == "refused"]
    if refused:
        sys.stdout.flush()
        print("\n".join(f"error: {message}" for message in refused), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()

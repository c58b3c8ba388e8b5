"""run_scripts/eval_table{1,2}.sh as a dry run: a stand-in interpreter records every command instead of running it.

The scripts must finish (rc 0) when no run has written a metrics file yet, issue one evaluation per paper cell with
the weight paths of its LLM, skip a cell whose metrics file exists for the same weights and options (not one
evaluated with other weights), and end with the comparison tables.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO

LLMS = ("opt2.7b", "opt6.7b", "flant5xl", "flant5xxl")
HF_DIRS = {"opt2.7b": "opt-2.7b", "opt6.7b": "opt-6.7b", "flant5xl": "flan-t5-xl", "flant5xxl": "flan-t5-xxl"}


def dry_run(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run `script` with PYTHON = a stand-in that appends its arguments (one per line, then a blank line) to a log."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" "" >> "{log}"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), "NPROC": "1", "WEIGHTS": "/w"}
    for name in ("LLMS", "CELLS", "FORCE"):
        env.pop(name, None)
    result = subprocess.run(["bash", str(REPO / "run_scripts" / script)], env=env, capture_output=True, text=True,
                            timeout=120)
    calls = [block.split("\n") for block in log.read_text().split("\n\n") if block] if log.exists() else []
    return result, calls


def evaluation(stem: str, llm: str, out: Path) -> list[str]:
    """The command the scripts should issue for one config (after the interpreter)."""
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(REPO / "evaluate.py"),
            "--cfg-path", str(REPO / "configs" / "eval" / f"{stem}.yaml"), "--options",
            f"model.blip2_checkpoint_path=/w/blip2_pretrained_{llm}.pth",
            "model.encoders.point.params.checkpoint_path=/w/point_bert_pretrained.pt",
            "model.qformers.blip2.config.tokenizer_path=/w/bert-base-uncased",
            "model.qformers.point.config.tokenizer_path=/w/bert-base-uncased",
            f"model.llm.path=/w/{HF_DIRS[llm]}", f"run.output_dir={out / stem}"]


def test_table1_dry_run_issues_every_cell_and_skips_finished_ones(tmp_path: Path):
    out = tmp_path / "out"
    done = out / "regionblip_opt6.7b_refcoco" / "refcoco_test_metrics.json"  # a cell evaluated earlier
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    (done.parent / ".eval_options").write_text("\n".join(evaluation("x", "opt6.7b", out)[8:-1]) + "\n")
    stale = out / "regionblip_opt2.7b_refcoco" / "refcoco_test_metrics.json"  # evaluated with other weights
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    (stale.parent / ".eval_options").write_text("model.llm.path=/old/opt-2.7b\n")
    result, calls = dry_run("eval_table1.sh", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    stems = [(f"regionblip_{llm}_{cell}", llm) for llm in LLMS
             for cell in ("vqav2", "coco", "refcoco", "objaverse", "scanrefer")]
    stems += [(f"blip2_crop_refcoco_{llm}", llm) for llm in LLMS]
    expected = [evaluation(stem, llm, out) for stem, llm in stems if stem != "regionblip_opt6.7b_refcoco"]
    evaluations = [c for c in calls if c[:2] == ["-m", "torch.distributed.run"]]
    assert sorted(evaluations) == sorted(expected)
    assert all((REPO / c[6]).is_file() for c in evaluations)  # every config the script names exists
    assert "== regionblip_opt6.7b_refcoco: done" in result.stdout
    assert "== regionblip_opt2.7b_refcoco: done" not in result.stdout  # changed weights: evaluated again
    assert (stale.parent / ".eval_options").read_text() == "\n".join(evaluation("x", "opt2.7b", out)[8:-1]) + "\n"
    assert (out / "table1" / "opt6.7b" / "regionblip_opt6.7b_refcoco__refcoco_test_metrics.json").resolve() == done
    [compare] = [c for c in calls if c[0] == str(REPO / "tools" / "compare_table1.py")]
    results = compare[2::2]
    assert len(results) == 12 and f"opt2.7b={out}/regionblip_opt2.7b_scanrefer/scanrefer_val_metrics.json" in results
    [table] = [c for c in calls if c[0] == str(REPO / "tools" / "metrics_table.py")]
    assert table[-4:] == ["--metrics", "CIDEr", "SPICE", "accuracy"]
    assert [table[i + 1] for i, a in enumerate(table) if a == "--run"] == [f"{llm}={out}/table1/{llm}" for llm in LLMS]
    assert len(calls) == len(expected) + 2  # nothing else was run


def test_table2_dry_run_issues_pafe_on_and_off(tmp_path: Path):
    out = tmp_path / "out"
    result, calls = dry_run("eval_table2.sh", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    cells = ("refcoco", "objaverse", "scanrefer")
    expected = [evaluation(f"regionblip_opt2.7b{kind}_{cell}", "opt2.7b", out) for cell in cells
                for kind in ("", "_no_pafe")]
    evaluations = [c for c in calls if c[:2] == ["-m", "torch.distributed.run"]]
    assert evaluations == expected
    assert all((REPO / c[6]).is_file() for c in evaluations)
    assert [c[0] for c in calls[len(expected):]] == [str(REPO / "tools" / t) for t in ("compare_table1.py",
                                                                                     "metrics_table.py")]
    assert (out / "table2" / "pafe").is_dir() and (out / "table2" / "no_pafe").is_dir()

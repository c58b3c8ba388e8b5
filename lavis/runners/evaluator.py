"""Evaluation: generate for every dataset that has an `eval_split`, gather from all ranks, score on rank 0.

Writes, per dataset, `{name}_{split}_metrics.json` under run.output_dir and logs a metrics table; captioning also
writes `{name}_{split}_captions.json` (COCO results format).

Bad samples (unreadable, invalid) are skipped, counted in the report's `skipped` and listed with their reasons in
`{name}_{split}_bad_samples.jsonl`. A dataset with more than `run.max_bad_sample_fraction` of its samples bad is
not scored (no metrics file: its numbers would describe a different set than the paper's); the other datasets are
still evaluated, then the run stops with a BadDataError naming every such dataset.

A task evaluates with `eval_step(model, batch) -> [result dict per sample]`. It may also define
`begin_eval(model, dataset, ds_cfg)` (every rank, once per dataset, before its first batch: e.g. class-name text
features) and `finish_eval(results, dataset, ds_cfg, stem) -> {report fields}` (rank 0, on the results of all
ranks: writes its own results files next to `stem` and scores them). Without `finish_eval` the results are
captions, scored with the COCO caption metrics against `eval_gt_file`.

A scored metrics file also says how much of the ground truth it covers: `gt_items`, `scored_items`, `missing_items`,
`missing_ids` (at most 20) and `incomplete` (captioning: the images of `eval_gt_file`; a `finish_eval` task: the
samples of the split, whose annotations or labels it scores). Incomplete results are listed again at the end of the
run: their numbers are not comparable with full-set ones.

Every metrics file, and `eval_provenance.json` for the folder (the captions / predictions files are lists in fixed
formats), records a `provenance`: the checkpoint (path, training step, SHA-256; null fields without
`run.load_ckpt_path`) and the SHA-256 of the resolved model config. Results in `run.output_dir` of another checkpoint
or config (or of unknown provenance) are moved to `superseded/<UTC time>_<their step>/` before the model is built;
those of the same checkpoint and config are overwritten in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from lavis.common import dist as dist_utils
from lavis.common.caption_metrics import coverage, format_table, incomplete_note
from lavis.common.checkpoint import checkpoint_digest
from lavis.common.config import ResolvedConfig
from lavis.common.gallery import GALLERY_DIR
from lavis.common.metric_log import progress
from lavis.common.preflight import Preflight
from lavis.common.registry import TASKS
from lavis.datasets.loaders import build_eval_loader, dataset_instruction, move_to
from lavis.runners.runner import BadDataError
from lavis.runners.setup import autocast, autocast_dtype, set_up_run

log = logging.getLogger("lavis.evaluator")

EVAL_CONFIG_NAME = "eval_config.yaml"
PROVENANCE_FILE = "eval_provenance.json"
SUPERSEDED_DIR = "superseded"
# the files an evaluation writes per `{dataset}_{split}` stem: the evaluator's and the tasks' (finish_eval)
RESULT_SUFFIXES = ("_metrics.json", "_captions.json", "_bad_samples.jsonl", "_vqa_results.json", "_predictions.json")


def eval_provenance(cfg: ResolvedConfig, load_path: Optional[Path], load_state: Optional[dict]) -> dict[str, Any]:
    """What this run's results score: the checkpoint whose tensors the model loads (path, training step, SHA-256;
    null fields for a model without one) and the SHA-256 of the resolved model config as canonical JSON."""
    checkpoint: dict[str, Any] = {"path": None, "step": None, "sha256": None}
    if load_path is not None:
        position = load_state.get("position") or {}  # a converted release checkpoint has none
        checkpoint = {"path": str(load_path.resolve()), "step": position.get("global_step"),
                      "sha256": checkpoint_digest(load_path)}
    model = json.dumps(OmegaConf.to_container(cfg.yaml.model, resolve=True), sort_keys=True)
    return {"checkpoint": checkpoint, "config_sha256": hashlib.sha256(model.encode()).hexdigest()}


def same_source(a: Optional[dict], b: Optional[dict]) -> bool:
    """One checkpoint (by content, wherever the file lies now) and one model config."""
    return (isinstance(a, dict) and isinstance(b, dict) and a.get("config_sha256") == b.get("config_sha256")
            and (a.get("checkpoint") or {}).get("sha256") == (b.get("checkpoint") or {}).get("sha256"))


def describe_provenance(provenance: Optional[dict]) -> str:
    if not isinstance(provenance, dict):
        return "no provenance recorded"
    ckpt = provenance.get("checkpoint") or {}
    where = "untrained (no checkpoint)" if ckpt.get("sha256") is None else \
        f"checkpoint {ckpt.get('path')} (step {ckpt.get('step')}, sha256 {ckpt['sha256'][:12]})"
    return f"{where}, model config sha256 {str(provenance.get('config_sha256'))[:12]}"


def _recorded_provenance(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text()).get("provenance")
    except (OSError, ValueError, AttributeError):  # unreadable or damaged: its provenance is unknown
        return None


def set_aside_superseded(output_dir: Path, provenance: dict) -> Optional[str]:
    """Moves the results of another checkpoint or config (or of unknown provenance) out of `output_dir` into
    `superseded/<UTC time>_<their step | 'untrained'>/`; returns the warning saying what moved and why, else None.

    Moved aside, not refused: evaluating a new checkpoint into the same folder is the normal workflow, and nothing is
    lost. Results of the same checkpoint and config stay, to be overwritten in place."""
    results = sorted(p for p in output_dir.iterdir() if p.is_file() and p.name.endswith(RESULT_SUFFIXES))
    manifest = output_dir / PROVENANCE_FILE
    recorded_in = ([manifest] if manifest.is_file() else []) + [p for p in results if p.name.endswith("_metrics.json")]
    recorded = [_recorded_provenance(p) for p in recorded_in]
    if not results and not recorded or recorded and all(same_source(p, provenance) for p in recorded):
        return None
    old = recorded[0] if recorded and all(same_source(p, recorded[0]) for p in recorded) else None
    if old is None:
        label, why = "unknown", "results without a recorded provenance, or of several checkpoints or configs"
    else:
        ckpt = old.get("checkpoint") or {}
        step = "unknown" if ckpt.get("step") is None else ckpt["step"]
        label = "untrained" if ckpt.get("sha256") is None else f"step{step}"
        why = f"results of {describe_provenance(old)}"
    moving = results + [p for p in (output_dir / EVAL_CONFIG_NAME, manifest) if p.is_file()]
    moving += [p for p in (output_dir / GALLERY_DIR,) if p.is_dir()]  # its pages show the old captions
    base = output_dir / SUPERSEDED_DIR / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}_{label}"
    aside, n = base, 1
    while aside.exists():  # two reruns within one second
        aside, n = base.with_name(f"{base.name}-{n}"), n + 1
    aside.mkdir(parents=True)
    for path in moving:
        os.replace(path, aside / path.name)
    return (f"run.output_dir {output_dir} held {why}; this run scores {describe_provenance(provenance)}. Moved "
            f"{len(moving)} files ({', '.join(p.name for p in moving)}) to {aside}, so that the folder holds only "
            "this run's results")


class Evaluator:
    def __init__(self, cfg: ResolvedConfig, cfg_path: str = "<config>"):
        self.task = TASKS.get(cfg.run.task)()
        if not hasattr(self.task, "eval_step"):
            raise ValueError(f"run.task '{cfg.run.task}' has no evaluation; use a task such as 'captioning'")
        eval_sets = [name for name, ds in cfg.datasets.items() if ds.eval_split]
        if not eval_sets:
            raise ValueError(f"{cfg_path}: no dataset sets eval_split; nothing to evaluate")
        self.cfg, self.provenance = cfg, None  # the provenance: rank 0's, set by _claim_output_dir
        setup = set_up_run(cfg, cfg_path, config_name=EVAL_CONFIG_NAME, before_build=self._claim_output_dir)
        self.dist, self.output_dir = setup.dist, setup.output_dir
        self.builders, self.model = setup.builders, setup.model
        self.amp_dtype = autocast_dtype(self.dist.device, cfg.run.amp.value)
        self.eval_sets = eval_sets

    def _claim_output_dir(self, checked: Preflight, info: dist_utils.DistInfo, output_dir: Path) -> None:
        """set_up_run's hook, once the folder is held and preflight has read the checkpoint, before anything else is
        written there or the model is built: record what this run scores and set aside the results of another
        checkpoint or config. Rank 0 does the work; every rank raises its error, if any."""
        error = None
        if info.is_main:
            try:
                self.provenance = eval_provenance(self.cfg, checked.load_path, checked.load_state)
                warning = set_aside_superseded(output_dir, self.provenance)
                if warning:
                    log.warning("%s", warning)
                (output_dir / PROVENANCE_FILE).write_text(json.dumps({"provenance": self.provenance}, indent=1))
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = e
        error = dist_utils.all_gather_objects(error)[0]
        if error is not None:
            raise error

    def evaluate(self) -> dict[str, dict[str, Any]]:
        self.model.eval()
        reports = {name: self._evaluate_one(name) for name in self.eval_sets}
        if self.dist.is_main:
            for report in reports.values():
                if report.get("incomplete"):
                    log.warning("%s", self._incomplete_message(report))
        # every rank holds the same gathered counts, so all ranks raise together (no rank waits in a collective)
        failures = [report["bad_data"] for report in reports.values() if "bad_data" in report]
        if failures:
            raise BadDataError("evaluation stopped: " + "; ".join(failures) + ". Fix the data or raise "
                               "run.max_bad_sample_fraction knowingly.")
        return reports

    def _evaluate_one(self, name: str) -> dict[str, Any]:
        ds_cfg = self.cfg.datasets[name]
        dataset = self.builders[name].build(ds_cfg.eval_split)
        loader = build_eval_loader(name, dataset, modality=ds_cfg.modality, batch_size=ds_cfg.batch_size,
                                   rank=self.dist.rank, world_size=self.dist.world_size, seed=self.cfg.run.seed,
                                   num_workers=self.cfg.run.num_workers,
                                   instruction=dataset_instruction(self.model, ds_cfg))
        if hasattr(self.task, "begin_eval"):
            self.task.begin_eval(self.model, dataset, ds_cfg)
        results, skipped = [], []
        for batch in progress(loader, desc=f"eval {name}", enabled=self.dist.is_main):
            skipped += [(s.sample_id, s.reason) for s in batch["skipped"]]
            if batch["sample_ids"]:
                with autocast(self.amp_dtype):
                    results += self.task.eval_step(self.model, move_to(batch, self.dist.device))
        results = [r for part in dist_utils.all_gather_objects(results) for r in part]
        skipped = [s for part in dist_utils.all_gather_objects(skipped) for s in part]
        report: dict[str, Any] = {"dataset": name, "split": ds_cfg.eval_split, "modality": ds_cfg.modality,
                                  "model": self.cfg.model_arch, "model_type": self.cfg.yaml.model.model_type,
                                  "samples": len(results), "skipped": len(skipped)}
        stem = self.output_dir / f"{name}_{ds_cfg.eval_split}"
        bad_file = stem.with_name(stem.name + "_bad_samples.jsonl")
        seen, limit = len(results) + len(skipped), self.cfg.run.max_bad_sample_fraction
        if skipped and len(skipped) > limit * seen:
            report["bad_data"] = (f"{name} ({ds_cfg.eval_split}): {len(skipped)} of {seen} samples were bad "
                                  f"({len(skipped) / seen:.2%} > run.max_bad_sample_fraction = {limit:.2%}), not "
                                  f"scored; the samples and reasons are in {bad_file}")
        if self.dist.is_main:
            for sample_id, reason in skipped:
                log.warning("eval %s: skipped bad sample %s: %s", name, sample_id, reason)
            if skipped:
                with bad_file.open("w") as f:
                    for sample_id, reason in sorted(skipped):
                        f.write(json.dumps({"dataset": name, "split": ds_cfg.eval_split, "sample_id": sample_id,
                                            "reason": reason}) + "\n")
            else:  # an earlier run's list (same checkpoint and config) would describe samples that are fine now
                bad_file.unlink(missing_ok=True)
            if "bad_data" in report:
                log.error("eval %s", report["bad_data"])
            elif hasattr(self.task, "finish_eval"):
                report.update(self.task.finish_eval(results, dataset, ds_cfg, stem))
                if "metrics" in report and "incomplete" not in report:
                    report.update(coverage(len(dataset), len(results), sorted((s for s, _ in skipped), key=str)))
            else:
                report.update(self._finish_captions(name, ds_cfg, results, stem))
            if "bad_data" not in report:
                report["provenance"] = self.provenance
                stem.with_name(stem.name + "_metrics.json").write_text(json.dumps(report, indent=1))
        dist_utils.barrier()
        return report

    def _finish_captions(self, name: str, ds_cfg, results: list[dict[str, Any]], stem) -> dict[str, Any]:
        duplicated = [k for k, n in Counter(r["image_id"] for r in results).items() if n > 1]
        if duplicated:
            raise ValueError(f"dataset {name}: eval items share image ids {duplicated[:5]}; each eval item "
                             "must have its own image_id")
        results.sort(key=lambda r: str(r["image_id"]))
        stem.with_name(stem.name + "_captions.json").write_text(json.dumps(results, indent=1))
        if not ds_cfg.eval_gt_file:
            log.warning("datasets.%s.eval_gt_file is not set: captions written, no metrics computed", name)
            return {}
        scored = self.task.score(results, ds_cfg.eval_gt_file, self.cfg.run.caption_metrics)
        from lavis.common.gallery import write_gallery  # imported here: its drawing is for evaluation only

        try:
            write_gallery(self.cfg.run, self.output_dir, name, ds_cfg,
                          lambda: self.builders[name].build(ds_cfg.eval_split), scored, results)
        except Exception as e:  # noqa: BLE001 - a picture must not cost the dataset its scores
            log.warning("gallery of %s not written (%s: %s); its metrics are unaffected", name, type(e).__name__, e)
        log.info("%s (%s, %d samples):\n%s", name, ds_cfg.eval_split, len(results), format_table(scored))
        for message in scored.missing:
            log.warning("%s", message)
        return {"metrics": scored.metrics, "missing": scored.missing,
                **coverage(scored.num_ground_truth, scored.num_images, scored.unscored_ids)}

    def _incomplete_message(self, report: dict[str, Any]) -> str:
        stem = self.output_dir / f"{report['dataset']}_{report['split']}"
        missing = f"{report['missing_items']} missing, e.g. {report['missing_ids'][:5]}"
        if report["skipped"]:
            missing += (f"; {report['skipped']} bad samples skipped, listed in "
                        f"{stem.with_name(stem.name + '_bad_samples.jsonl')}")
        note = incomplete_note(report["gt_items"], report["scored_items"])
        metrics_file = stem.with_name(stem.name + "_metrics.json")
        return (f"{report['dataset']} ({report['split']}): {note} ({missing}); {metrics_file} says incomplete: "
                "true. Restore the missing items (fix the bad samples, or the ground truth / eval split if they "
                "differ) and evaluate again for a full-set number")

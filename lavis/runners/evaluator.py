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
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from tqdm import tqdm

from lavis.common import dist as dist_utils
from lavis.common.caption_metrics import coverage, format_table, incomplete_note
from lavis.common.config import ResolvedConfig
from lavis.common.registry import TASKS
from lavis.datasets.loaders import build_eval_loader, move_to
from lavis.runners.runner import BadDataError
from lavis.runners.setup import autocast, autocast_dtype, set_up_run

log = logging.getLogger("lavis.evaluator")


class Evaluator:
    def __init__(self, cfg: ResolvedConfig, cfg_path: str = "<config>"):
        self.cfg = cfg
        self.task = TASKS.get(cfg.run.task)()
        if not hasattr(self.task, "eval_step"):
            raise ValueError(f"run.task '{cfg.run.task}' has no evaluation; use a task such as 'captioning'")
        eval_sets = [name for name, ds in cfg.datasets.items() if ds.eval_split]
        if not eval_sets:
            raise ValueError(f"{cfg_path}: no dataset sets eval_split; nothing to evaluate")
        setup = set_up_run(cfg, cfg_path, config_name="eval_config.yaml")
        self.dist, self.output_dir = setup.dist, setup.output_dir
        self.builders, self.model = setup.builders, setup.model
        self.amp_dtype = autocast_dtype(self.dist.device, cfg.run.amp.value)
        self.eval_sets = eval_sets

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
                                   num_workers=self.cfg.run.num_workers)
        if hasattr(self.task, "begin_eval"):
            self.task.begin_eval(self.model, dataset, ds_cfg)
        results, skipped = [], []
        for batch in tqdm(loader, desc=f"eval {name}", disable=not self.dist.is_main, dynamic_ncols=True):
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
            if "bad_data" in report:
                log.error("eval %s", report["bad_data"])
            elif hasattr(self.task, "finish_eval"):
                report.update(self.task.finish_eval(results, dataset, ds_cfg, stem))
                if "metrics" in report and "incomplete" not in report:
                    report.update(coverage(len(dataset), len(results), sorted((s for s, _ in skipped), key=str)))
            else:
                report.update(self._finish_captions(name, ds_cfg, results, stem))
            if "bad_data" not in report:
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

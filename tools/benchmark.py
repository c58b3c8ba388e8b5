"""Throughput of a configured model at its configured size, random weights, synthetic batches (no data needed;
tokenizer and LLM config directories are). See README "Benchmarks" and lavis/runners/benchmark.py.

    python tools/benchmark.py --cfg-path CONFIG.yaml [--options k=v ...] [--modalities image ...] [--steps 10]
        [--batch-size 8] [--generate-steps 1] [--compare k=v ... | --compare-naive] [--repeats N]
    python tools/benchmark.py --cfg-path CONFIG.yaml [--options k=v ...] --find-max-batch [--max-batch 1024]
--compare runs the config as given (baseline), then with the extra key=value options (candidate), in this process,
and prints both tables and the candidate / baseline ratios; --compare-naive takes as baseline the naive path (no
feature cache, the frozen encoder one sample at a time, fp32) and as candidate the config as given. --repeats N
alternates them N times (median per modality). --find-max-batch (CUDA only) prints the largest per-GPU train batch
per modality.
"""

from __future__ import annotations

import argparse
import logging

import lavis  # noqa: F401  (registers the built-in models, encoders, datasets, tasks)
from lavis.common.config import add_debug_flag, load_config, report_config_errors
from lavis.runners.benchmark import (
    NAIVE_TITLE,
    device_line,
    format_comparison,
    format_max_batch,
    format_results,
    max_batch_per_modality,
    median_runs,
    pick_device,
    run_benchmark,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="key=value overrides, as for train.py (repeatable)")
    add_debug_flag(parser)
    parser.add_argument("--modalities", nargs="+", help="default: every modality of the model")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps per modality (after 2 untimed)")
    parser.add_argument("--batch-size", type=int, help="default: the batch_size of the modality's dataset (with "
                                                       "--find-max-batch: where the doubling starts)")
    parser.add_argument("--generate-steps", type=int, default=1, help="timed generate() calls (0: skip)")
    parser.add_argument("--compare", nargs="+", help="candidate: these key=value options on top of the baseline")
    parser.add_argument("--compare-naive", action="store_true",
                        help="baseline: the naive path (no feature cache, per-sample encoder, fp32); candidate: the "
                             "config as given")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run baseline and candidate alternately this many times and report each modality's "
                             "median run (steadier ratios on a shared or throttling machine)")
    parser.add_argument("--find-max-batch", action="store_true",
                        help="CUDA only: per modality, the largest per-GPU train batch (double until out of memory, "
                             "then bisect)")
    parser.add_argument("--max-batch", type=int, default=1024, help="upper limit of --find-max-batch's search")
    parser.add_argument("--pretrained", action="store_true", help="load the configured weights (no random_init)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.compare and args.compare_naive:
        parser.error("--compare and --compare-naive both choose the baseline; give one")

    if args.find_max_batch:
        device = pick_device(load_config(args.cfg_path, args.options + ["model.random_init=true"]))
        if device.type != "cuda":
            parser.error(f"--find-max-batch needs a CUDA GPU: it doubles the batch until torch.cuda.OutOfMemoryError; "
                         f"this run's device is {device.type}, where running out of memory is not an error to catch")
        print(device_line(args.cfg_path, args.options))
        found = max_batch_per_modality(args.cfg_path, args.options, modalities=args.modalities,
                                       start=args.batch_size, limit=args.max_batch, random_init=not args.pretrained)
        print(format_max_batch(found, args.max_batch))
        return {"max_batch": found}

    def run(options: list[str], naive: bool):
        return run_benchmark(args.cfg_path, options, modalities=args.modalities, steps=args.steps,
                             batch_size=args.batch_size, generate_steps=args.generate_steps,
                             random_init=not args.pretrained, naive=naive)

    print(device_line(args.cfg_path, args.options))
    given = "baseline" + (f": --options {' '.join(args.options)}" if args.options else "")
    # name -> (options, naive, title)
    variants = {"baseline": (args.options, False, given)}
    if args.compare:
        variants["candidate"] = (args.options + args.compare, False, f"candidate: + {' '.join(args.compare)}")
    elif args.compare_naive:
        variants = {"baseline": (args.options, True, f"baseline, {NAIVE_TITLE}"),
                    "candidate": (args.options, False, "candidate, optimised: the config as given"
                                  + (f" (--options {' '.join(args.options)})" if args.options else ""))}
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(max(1, args.repeats)):
        for name, (options, naive, _title) in variants.items():
            runs[name].append(run(options, naive))
    out = {name: median_runs(found) for name, found in runs.items()}
    for name, (_options, _naive, title) in variants.items():
        print(format_results(out[name], title))
    if "candidate" in out:
        print(format_comparison(out["baseline"], out["candidate"]))
    return out


if __name__ == "__main__":
    report_config_errors(main)  # a config error: one message, exit status 2 (--debug: the traceback)

"""Throughput of a configured model at its configured size, random weights, synthetic batches (no data needed;
tokenizer and LLM config directories are). See README "Benchmarks" and lavis/runners/benchmark.py.

    python tools/benchmark.py --cfg-path CONFIG.yaml [--options k=v ...] [--modalities image ...] [--steps 10]
        [--batch-size 8] [--generate-steps 1] [--compare k=v ...]
--compare runs the config as given (baseline), then with the extra key=value options (candidate), in this process,
and prints both tables and the candidate / baseline ratios; --repeats N alternates them N times (median per modality).
"""

from __future__ import annotations

import argparse
import logging

import lavis  # noqa: F401  (registers the built-in models, encoders, datasets, tasks)
from lavis.runners.benchmark import device_line, format_comparison, format_results, median_runs, run_benchmark


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--options", nargs="+", default=[], help="key=value overrides, as for train.py")
    parser.add_argument("--modalities", nargs="+", help="default: every modality of the model")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps per modality (after 1 warm-up)")
    parser.add_argument("--batch-size", type=int, help="default: the batch_size of the modality's dataset")
    parser.add_argument("--generate-steps", type=int, default=1, help="timed generate() calls (0: skip)")
    parser.add_argument("--compare", nargs="+", help="candidate: these key=value options on top of the baseline")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run baseline and candidate alternately this many times and report each modality's "
                             "median run (steadier ratios on a shared or throttling machine)")
    parser.add_argument("--pretrained", action="store_true", help="load the configured weights (no random_init)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    def run(options: list[str]):
        return run_benchmark(args.cfg_path, options, modalities=args.modalities, steps=args.steps,
                             batch_size=args.batch_size, generate_steps=args.generate_steps,
                             random_init=not args.pretrained)

    print(device_line(args.cfg_path, args.options))
    variants = {"baseline": args.options}
    if args.compare:
        variants["candidate"] = args.options + args.compare
    runs: dict[str, list] = {name: [] for name in variants}
    for _ in range(max(1, args.repeats)):
        for name, options in variants.items():
            runs[name].append(run(options))
    out = {name: median_runs(found) for name, found in runs.items()}
    print(format_results(out["baseline"], "baseline" + (f": --options {' '.join(args.options)}" if args.options
                                                        else "")))
    if args.compare:
        print(format_results(out["candidate"], f"candidate: + {' '.join(args.compare)}"))
        print(format_comparison(out["baseline"], out["candidate"]))
    return out


if __name__ == "__main__":
    main()

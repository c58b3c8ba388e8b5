"""Evaluate a model on the eval splits of a config's datasets:
    python evaluate.py --cfg-path configs/eval/... [--options run.load_ckpt_path=out/checkpoint_....pth ...]
(or under torchrun; each sample is generated once across ranks and scored on rank 0)."""

from __future__ import annotations

import argparse

from torch.distributed.elastic.multiprocessing.errors import record

import lavis  # noqa: F401  (registers the built-in models, datasets, tasks and runners)
from lavis.common import dist as dist_utils
from lavis.common.config import load_config
from lavis.runners.evaluator import Evaluator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cfg-path", required=True, help="run YAML; datasets with eval_split are evaluated")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="overrides")
    return parser.parse_args(argv)


@record  # under torchrun, a failing rank's traceback heads the job's error report
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.cfg_path, args.options)
    try:
        Evaluator(cfg, cfg_path=args.cfg_path).evaluate()
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    main()

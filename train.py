"""Train from a YAML config:  python train.py --cfg-path configs/... [--options key=value ...]
(or under torchrun for several processes / nodes; see run_scripts/)."""

from __future__ import annotations

import argparse

from torch.distributed.elastic.multiprocessing.errors import record

import lavis  # noqa: F401  (registers the built-in models, datasets, tasks and runners)
from lavis.common import dist as dist_utils
from lavis.common.config import load_config
from lavis.common.registry import RUNNERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cfg-path", required=True, help="run YAML with model, datasets and run sections")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. run.max_epoch=2 datasets.refcoco.batch_size=8")
    return parser.parse_args(argv)


@record  # under torchrun, a failing rank's traceback heads the job's error report
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.cfg_path, args.options)
    try:
        RUNNERS.get(cfg.run.runner)(cfg, cfg_path=args.cfg_path).train()
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    main()

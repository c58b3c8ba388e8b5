"""Train from a YAML config:  python train.py --cfg-path configs/... [--options key=value ...]
(or under torchrun for several processes / nodes; see run_scripts/)."""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import record

import lavis  # noqa: F401  (registers the built-in models, datasets, tasks and runners)
from lavis.common import dist as dist_utils
from lavis.common.config import config_from_command_line, report_config_errors
from lavis.common.registry import RUNNERS


def main(argv: list[str] | None = None) -> None:
    cfg, cfg_path = config_from_command_line(__doc__, argv)
    try:
        RUNNERS.get(cfg.run.runner)(cfg, cfg_path=cfg_path).train()
    finally:
        dist_utils.shutdown()


@record  # under torchrun, a failing rank's traceback heads the job's error report
def cli(argv: list[str] | None = None) -> None:
    """`main` from the command line: a config error is one message and exit status 2 (--debug: the traceback)."""
    report_config_errors(main, argv)


if __name__ == "__main__":
    cli()

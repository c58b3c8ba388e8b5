"""Evaluate a model on the eval splits of a config's datasets:
    python evaluate.py --cfg-path configs/eval/... [--options run.load_ckpt_path=out/checkpoint_....pth ...]
(or under torchrun; each sample is generated once across ranks and scored on rank 0)."""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import record

import lavis  # noqa: F401  (registers the built-in models, datasets, tasks and runners)
from lavis.common import dist as dist_utils
from lavis.common.config import config_from_command_line
from lavis.runners.evaluator import Evaluator


@record  # under torchrun, a failing rank's traceback heads the job's error report
def main(argv: list[str] | None = None) -> None:
    cfg, cfg_path = config_from_command_line(__doc__, argv)
    try:
        Evaluator(cfg, cfg_path=cfg_path).evaluate()
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    main()

"""Run under torchrun by tests/test_distributed.py: train, then every rank saves what it ended with."""

import sys

import torch

import lavis  # noqa: F401
from lavis.common import dist as dist_utils
from lavis.common.config import load_config
from lavis.common.registry import RUNNERS

if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[2:])
    runner = RUNNERS.get(cfg.run.runner)(cfg, cfg_path=sys.argv[1])
    runner.train()
    torch.save(runner.model.trainable_state_dict(), runner.output_dir / f"final_rank{runner.dist.rank}.pt")
    dist_utils.shutdown()

"""Fill the frozen-encoder feature cache of a run YAML's datasets (those with `feature_cache_dir`, or --datasets).

    python tools/precompute_features.py --cfg-path CONFIG.yaml [--datasets coco refcoco] [--splits train]
    torchrun --nproc-per-node 8 tools/precompute_features.py --cfg-path CONFIG.yaml      # rank-sharded
Re-running is cheap: a folder whose key (encoder, weights, processor, dtype, precision) is unchanged and complete
is kept; --force rebuilds it. See lavis/datasets/feature_cache.py for the layout and the key.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lavis  # noqa: F401  (registers the built-in models, encoders, datasets)
from lavis.common.config import add_debug_flag, load_config, report_config_errors
from lavis.runners.features import precompute_features


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True)
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="key=value overrides, as for train.py (repeatable)")
    add_debug_flag(parser)
    parser.add_argument("--datasets", nargs="+", help="dataset names (default: all with feature_cache_dir)")
    parser.add_argument("--splits", nargs="+", help="splits to fill (default: each dataset's train and eval split)")
    parser.add_argument("--batch-size", type=int, help="encoder batch size (default: the dataset's batch_size)")
    parser.add_argument("--force", action="store_true", help="rebuild folders that are already complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.cfg_path, args.options)
    folders = precompute_features(cfg, args.cfg_path, args.datasets, args.splits, args.batch_size, args.force)
    for folder in folders:
        print(folder)
    return folders


if __name__ == "__main__":
    report_config_errors(main)  # a config error: one message, exit status 2 (--debug: the traceback)

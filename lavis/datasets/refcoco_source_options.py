"""The command-line options that choose a RefCOCO source (a flat RegionBLIP JSON list or the lichengunc/refer
layout) and the reading of it, shared by tools/prepare_eval_refcoco.py and tools/write_region_shards.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lavis.datasets.datasets.refcoco import REFER_SPLITS, flat_records, refer_paths, refer_records


def add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flat-file", help="a flat RegionBLIP JSON list (instead of the refer layout)")
    parser.add_argument("--refer-root", help="holds <dataset>/refs(<split-by>).p and <dataset>/instances.json")
    parser.add_argument("--dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"])
    parser.add_argument("--split-by", default="unc", choices=sorted(REFER_SPLITS))
    parser.add_argument("--split", default="val")


def load_source(args: argparse.Namespace):
    """(records, skipped) from --flat-file or the refer layout; exits with a clear message on a bad path."""
    if args.flat_file:
        if not Path(args.flat_file).is_file():
            sys.exit(f"error: --flat-file {args.flat_file} does not exist; it should be a JSON list of "
                     "{image, bbox, caption, image_id}")
        return flat_records(args.flat_file)
    if not args.refer_root:
        sys.exit("error: give --flat-file or --refer-root")
    for path in refer_paths(args.refer_root, args.dataset, args.split_by):
        if not path.is_file():
            sys.exit(f"error: {path} does not exist; --refer-root should hold {args.dataset}/{path.name}")
    return refer_records(args.refer_root, args.dataset, args.split_by, args.split)

"""`histoldm export-patches`: one split's real patches as an image folder for fid-ref and evaluate --real."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "export-patches",
        "Write the real patches of one split (e.g. test) with an index.jsonl; --size resizes them to the model's resolution.",
        "histoldm export-patches work/store --captions work/captions.parquet --split work/split.json --out work/test_patches --size 256",
    )
    p.add_argument("store", type=Path, nargs="?", help="patch store folder (with patches.parquet)")
    p.add_argument("--captions", type=Path, help="captions.parquet of the store")
    p.add_argument("--split", type=Path, help="split.json")
    p.add_argument("--split-name", help="which split to export (default test)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--size", type=int, help="resize to this many pixels, the size the model generates (default: as stored; "
                   "`evaluate` refuses real and generated images of different sizes)")
    p.add_argument("--n", type=int, help="a seeded choice of this many patches (default: all of the split)")
    p.add_argument("--seed", type=int, help="seed of that choice (default 0)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.data.export import ExportPatchesConfig, run_export_patches

    flags = {"store": args.store, "captions": args.captions, "split": args.split, "split_name": args.split_name, "out": args.out,
             "size": args.size, "n": args.n, "seed": args.seed}
    result = run_export_patches(resolve_config(args, ExportPatchesConfig, flags))
    print(f"{result.images} patches in {result.out}")
    return 0

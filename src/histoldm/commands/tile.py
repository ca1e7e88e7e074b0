"""`histoldm tile`: slides -> patch store (PNG patches + patches.parquet)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config


def register(sub: Any) -> None:
    p = add_command(sub, "tile", "Cut fixed-magnification tissue patches from every slide OpenSlide reads.",
                    "histoldm tile slides/ --out store --magnification 10 --size 256 --overlap 32 --workers 2")
    p.add_argument("slides", type=Path, nargs="?", help="slide file or folder (searched recursively)")
    p.add_argument("--out", type=Path, help="patch store folder")
    p.add_argument("--magnification", type=float, help="target magnification (10x = 1.0 um/px; default 10)")
    p.add_argument("--size", type=int, help="patch side in pixels (default 256)")
    p.add_argument("--overlap", type=int, help="pixels shared by neighbouring patches (default 0)")
    p.add_argument("--mpp", type=float, help="level-0 microns per pixel, overriding slide metadata")
    p.add_argument("--min-tissue", type=float, help="minimum tissue fraction of a patch (default 0.5)")
    p.add_argument("--workers", type=int, help="processes, one slide each (default 1)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.data.tiling import TileConfig, run_tile

    cfg = resolve_config(args, TileConfig, {"slides": args.slides, "out": args.out, "magnification": args.magnification,
                                            "size": args.size, "overlap": args.overlap, "mpp": args.mpp,
                                            "min_tissue": args.min_tissue, "workers": args.workers})
    r = run_tile(cfg)
    print(f"{r['patches']} patches in {r['store']} ({r['slides_tiled']} slides tiled, {r['slides_resumed']} resumed, "
          f"{r['slides_failed']} skipped)")
    for s in r["skipped"]:
        print(f"skipped: {s['reason']}")
    return 0

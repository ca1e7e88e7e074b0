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
    p.add_argument("--shard", help="K/N: tile only slides K, K+N, ... of the sorted list (0 <= K < N), e.g. "
                   "$SLURM_ARRAY_TASK_ID/10; jobs share --out and the last one to finish leaves the complete patches.parquet")
    add_config_options(p)
    p.set_defaults(func=run)


def parse_shard(text: str | None) -> list[int] | None:
    """'K/N' -> [K, N]; anything else is a UserError naming what was typed."""
    from histoldm.errors import UserError

    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n)):
        raise UserError(f"--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4")
    return [int(k), int(n)]


def run(args: argparse.Namespace) -> int:
    from histoldm.data.tiling import TileConfig, run_tile

    cfg = resolve_config(args, TileConfig, {"slides": args.slides, "out": args.out, "magnification": args.magnification,
                                            "size": args.size, "overlap": args.overlap, "mpp": args.mpp,
                                            "min_tissue": args.min_tissue, "workers": args.workers, "shard": parse_shard(args.shard)})
    r = run_tile(cfg)
    print(f"{r.patches} patches in {r.store} ({r.slides_tiled} slides tiled, {r.slides_resumed} resumed, "
          f"{r.slides_failed} skipped" + (f"; shard {r.shard}, {r.slides_pending} slides of other shards not finished yet)" if r.shard else ")"))
    for s in r.skipped:
        print(f"skipped: {s['reason']}")
    return 0

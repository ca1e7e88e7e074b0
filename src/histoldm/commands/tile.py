"""`histoldm tile`: slides -> patch store (PNG patches + patches.parquet)."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "tile", "Cut fixed-magnification tissue patches from every slide OpenSlide reads.",
                "histoldm tile slides/ --out store --magnification 10 --size 256 --overlap 32 --workers 2", run,
                config="histoldm.data.tiling:TileConfig", positional="slides", converters={"shard": parse_shard})


def parse_shard(text: str) -> list[int]:
    """'K/N' -> [K, N], for `--shard $SLURM_ARRAY_TASK_ID/10`; anything else is a UserError naming what was typed."""
    from histoldm.errors import UserError

    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n)):
        raise UserError(f"--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4")
    return [int(k), int(n)]


def run(args: argparse.Namespace) -> int:
    from histoldm.data.tiling import TileConfig, run_tile

    r = run_tile(resolve_config(args, TileConfig))
    print(f"{r.patches} patches in {r.store} ({r.slides_tiled} slides tiled, {r.slides_resumed} resumed, "
          f"{r.slides_failed} skipped" + (f"; shard {r.shard}, {r.slides_pending} slides of other shards not finished yet)" if r.shard else ")"))
    for s in r.skipped:
        print(f"skipped: {s['reason']}")
    return 0

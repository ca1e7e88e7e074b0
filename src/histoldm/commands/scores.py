"""`histoldm scores`: tumour / TIL probabilities per patch -> scores.parquet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config


def register(sub: Any) -> None:
    p = add_command(sub, "scores", "Attach tumour and TIL probabilities to patches (CSV, heat-map grids, or an image proxy).",
                    "histoldm scores store --csv wsinfer_scores.csv")
    p.add_argument("store", type=Path, nargs="?", help="patch store folder")
    p.add_argument("--out", type=Path, help="output Parquet (default STORE/scores.parquet)")
    p.add_argument("--csv", type=Path, help="CSV with patch_id (or slide_id, x, y) and prob_tumor / prob_til")
    p.add_argument("--heatmaps", type=Path, help="folder of <slide_id>.npz grids (prob_tumor, prob_til[, stride])")
    p.add_argument("--stride", type=float, help="level-0 pixels per heat-map cell")
    p.add_argument("--proxy", action="store_true", default=None, help="HEURISTIC scores from the images (demo only)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.data.scores import ScoresConfig, run_scores

    cfg = resolve_config(args, ScoresConfig, {"store": args.store, "out": args.out, "csv": args.csv,
                                              "heatmaps": args.heatmaps, "stride": args.stride, "proxy": args.proxy})
    r = run_scores(cfg)
    print(f"{r.scored}/{r.patches} patches scored ({r.method}) -> {r.out}; {len(r.skipped)} rows skipped")
    for s in r.skipped[:10]:
        print(f"skipped: {s}")
    return 0

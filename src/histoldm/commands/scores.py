"""`histoldm scores`: tumour / TIL probabilities per patch -> scores.parquet."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "scores", "Attach tumour and TIL probabilities to patches (CSV, heat-map grids, or an image proxy).",
                "histoldm scores store --csv wsinfer_scores.csv", run,
                config="histoldm.data.scores:ScoresConfig", positional="store")


def run(args: argparse.Namespace) -> int:
    from histoldm.data.scores import ScoresConfig, run_scores

    r = run_scores(resolve_config(args, ScoresConfig))
    print(f"{r.scored}/{r.patches} patches scored ({r.method}) -> {r.out}; {len(r.skipped)} rows skipped")
    for s in r.skipped[:10]:
        print(f"skipped: {s}")
    return 0

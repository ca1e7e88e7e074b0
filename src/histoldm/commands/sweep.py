"""`histoldm sweep`: the paper's summary-length experiment (Table 2) from one config."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, add_dry_run, printed_dry_run, resolve_config


def register(sub: Any) -> None:
    add_dry_run(add_command(sub, "sweep", "Summaries at several token budgets -> captions -> train -> sample -> evaluate; FID with its seed-to-seed floor and train memory per budget.",
                            "histoldm sweep --config configs/sweep_demo.yaml", run, config="histoldm.experiments.sweep:SweepConfig"))


def run(args: argparse.Namespace) -> int:
    from histoldm.experiments.sweep import SweepConfig, run_sweep

    cfg = resolve_config(args, SweepConfig)
    if printed_dry_run(args, cfg):
        return 0
    result = run_sweep(cfg)
    print(open(result["table"], encoding="utf-8").read())
    print(f"table: {result['table']}  plot: {result['plot']}  report: {result['report']}")
    return 0

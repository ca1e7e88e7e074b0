"""`histoldm sweep`: the paper's summary-length experiment (Table 2) from one config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "sweep",
        "Summaries at several token budgets -> captions -> train -> sample -> evaluate; FID with its seed-to-seed floor and train memory per budget.",
        "histoldm sweep --config configs/sweep_demo.yaml",
    )
    p.add_argument("--out", type=Path, help="output folder (results.csv, results.md, results.png, tokens.png, report.html, one folder per budget)")
    p.add_argument("--budgets", type=int, nargs="+", help="summary budgets in CLIP tokens (default 20 35 50 154)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.config import dump_config
    from histoldm.experiments.sweep import SweepConfig, run_sweep

    cfg = resolve_config(args, SweepConfig, {"out": args.out, "budgets": args.budgets})
    if args.dry_run:
        print(dump_config(cfg), end="")
        return 0
    result = run_sweep(cfg)
    print(open(result["table"], encoding="utf-8").read())
    print(f"table: {result['table']}  plot: {result['plot']}  report: {result['report']}")
    return 0

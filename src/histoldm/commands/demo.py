"""`histoldm demo`: the whole pipeline at tiny scale on embedded data, ending in an HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "demo",
        "Run every stage for real on the bundled CC0 slide and synthetic cases (CPU, minutes) and write report.html.",
        "histoldm demo --out demo-out",
    )
    p.add_argument("--out", type=Path, help="output folder (default demo-out); a re-run resumes finished stages")
    p.add_argument("--budget", type=int, help="summary length in CLIP tokens (default 35)")
    p.add_argument("--train-steps", type=int, help="UNet training steps (default 1200)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core no other process is using at the start; 1 when others may start later)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.experiments.demo import DemoConfig, run_demo

    flags = {"out": args.out, "budget": args.budget, "threads": args.threads,
             "recipe": {"train_steps": args.train_steps} if args.train_steps is not None else None}
    result = run_demo(resolve_config(args, DemoConfig, flags))
    print(f"demo finished in {result['timing']['line']}; open the report: {result['report']}")
    return 0

"""`histoldm demo`: the whole pipeline at tiny scale on embedded data, ending in an HTML report."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "demo", "Run every stage for real on the bundled CC0 slide and synthetic cases (CPU, minutes) and write report.html.",
                "histoldm demo --out demo-out", run,
                config="histoldm.experiments.demo:DemoConfig", nested={"--train-steps": ("recipe.train.max_steps", "histoldm.train.trainer:TrainConfig.max_steps")})


def run(args: argparse.Namespace) -> int:
    from histoldm.experiments.demo import DemoConfig, run_demo

    result = run_demo(resolve_config(args, DemoConfig))
    print(f"demo finished in {result['timing']['line']}; open the report: {result['report']}")
    return 0

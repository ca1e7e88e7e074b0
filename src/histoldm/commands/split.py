"""`histoldm split`: patient-level train/val/test split (seeded, optionally stratified) or import a given one."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "split", "Split cases (patients) into train/val/test; no case in two splits.",
                "histoldm split --store store --out split.json --seed 0 --fractions train=0.8,val=0.1,test=0.1", run,
                config="histoldm.data.splits:SplitConfig")


def run(args: argparse.Namespace) -> int:
    from histoldm.data.splits import SplitConfig, run_split

    r = run_split(resolve_config(args, SplitConfig))
    print(f"{r.out}: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()) + " cases")
    return 0

"""`histoldm split`: patient-level train/val/test split (seeded, optionally stratified) or import a given one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config


def _fractions(text: str) -> dict[str, float]:
    """'train=0.8,val=0.1,test=0.1' -> dict."""
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        out[name.strip()] = float(value)
    return out


def register(sub: Any) -> None:
    p = add_command(sub, "split", "Split cases (patients) into train/val/test; no case in two splits.",
                    "histoldm split --store store --out split.json --seed 0 --fractions train=0.8,val=0.1,test=0.1")
    p.add_argument("--out", type=Path, help="split.json to write")
    p.add_argument("--store", type=Path, help="patch store whose case_id column lists the cases")
    p.add_argument("--cases", type=Path, help="CSV with case_id (and the label column) instead of a store")
    p.add_argument("--labels", type=Path, help="CSV case_id,<label> for stratifying a store's cases")
    p.add_argument("--stratify-by", help="label column to stratify by")
    p.add_argument("--fractions", type=_fractions, help="e.g. train=0.8,val=0.1,test=0.1")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--given", type=Path, help="import this split (split.json, {split: [cases]} JSON, or CSV case_id,split)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.data.splits import SplitConfig, run_split

    cfg = resolve_config(args, SplitConfig, {"out": args.out, "store": args.store, "cases": args.cases, "labels": args.labels,
                                             "stratify_by": args.stratify_by, "fractions": args.fractions,
                                             "seed": args.seed, "given": args.given})
    r = run_split(cfg)
    print(f"{r.out}: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()) + " cases")
    return 0

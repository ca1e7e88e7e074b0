"""`histoldm assets`: where the offline assets are, and whether they are all installed."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.assets import ASSETS, check_assets
from histoldm.commands._common import add_command


def register(sub: Any) -> None:
    p = add_command(
        sub, "assets", "List the offline assets shipped inside PyPI packages.", "histoldm assets --check", run
    )
    p.add_argument("--check", action="store_true", help="exit 2 when any asset is missing")


def run(args: argparse.Namespace) -> int:
    found = check_assets()
    for name, where in found.items():
        print(f"{name:14s} {where}  [{ASSETS[name][3]}]")
    missing = [n for n, w in found.items() if w.startswith("MISSING")]
    return 2 if args.check and missing else 0

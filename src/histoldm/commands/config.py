"""`histoldm config list|show`: the configs shipped inside the package, to name with `--config NAME` or copy."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command
from histoldm.config_files import shipped_config, shipped_configs
from histoldm.errors import UserError


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "config",
        "List the shipped configs, or print one (to copy and edit: `histoldm config show pathldm > my.yaml`).",
        "histoldm config show pathldm > my.yaml",
        run,
    )
    p.add_argument("action", choices=["list", "show"], help="list: the shipped configs' names; show: print one")
    p.add_argument("name", nargs="?", help="show: the config's name (as `histoldm config list` gives it)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, path in shipped_configs().items():
            first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
            print(f"{name:22s} {first}")
        return 0
    if not args.name:
        raise UserError(
            "config show: give a config's name, e.g. `histoldm config show pathldm` (`histoldm config list` names them)"
        )
    print(shipped_config(args.name).read_text(encoding="utf-8"), end="")
    return 0

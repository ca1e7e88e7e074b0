"""Options and helpers shared by subcommands: --config/--set and config resolution."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from histoldm.config import deep_merge, load_config, parse_overrides

C = TypeVar("C", bound=BaseModel)


def add_command(sub: Any, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A subparser whose --help ends with an example invocation."""
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config file; flags given on the command line override it")
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override one config key (repeatable; dotted keys for nested fields)"
    )


def resolve_config(args: argparse.Namespace, model: type[C], flags: dict[str, Any]) -> C:
    """Config = defaults <- --config YAML <- explicit flags (None means 'not given') <- --set pairs."""
    explicit = {k: v for k, v in flags.items() if v is not None}
    overrides = deep_merge(explicit, parse_overrides(getattr(args, "overrides", None)))
    return load_config(model, getattr(args, "config", None), overrides)

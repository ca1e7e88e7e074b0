"""Options and helpers shared by subcommands: --config/--set and config resolution."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from histoldm.commands._flags import add_config_flags, given_flags
from histoldm.config import deep_merge, load_config, parse_overrides

C = TypeVar("C", bound=BaseModel)


def add_command(sub: Any, name: str, help: str, example: str, run: Callable[[argparse.Namespace], int],
                config: str | None = None, **derive: Any) -> argparse.ArgumentParser:
    """A subparser whose --help ends with an example invocation.

    config: 'module:Model' whose fields become the options (see _flags.add_config_flags, which takes
    `derive`), plus --config/--set. The module is imported on first use of this subcommand only, so
    that `histoldm --help` and other commands do not pay for the stage's imports.
    """

    def populate(parser: argparse.ArgumentParser) -> None:
        module, _, model = config.partition(":")  # type: ignore[union-attr]
        add_config_flags(parser, getattr(importlib.import_module(module), model), **derive)
        add_config_options(parser)

    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        populate=populate if config else None,
    )
    parser.set_defaults(func=run)
    return parser


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config file; options given on the command line override it")
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE",
        help="override one config key (repeatable; dotted keys for nested fields); wins over an option for the same key",
    )  # fmt: skip


def resolve_config(args: argparse.Namespace, model: type[C]) -> C:
    """Config = defaults <- --config YAML <- options given on the command line <- --set pairs."""
    overrides = deep_merge(given_flags(args), parse_overrides(getattr(args, "overrides", None)))
    return load_config(model, getattr(args, "config", None), overrides)


def add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def printed_dry_run(args: argparse.Namespace, cfg: BaseModel) -> bool:
    """With --dry-run, print the resolved config (YAML, loadable with --config) and report True."""
    from histoldm.config import dump_config

    if args.dry_run:
        print(dump_config(cfg), end="")
    return bool(args.dry_run)

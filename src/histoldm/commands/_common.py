"""Options and helpers shared by subcommands: --config/--set and config resolution."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from histoldm.commands._flags import add_config_flags, given_flags
from histoldm.config import deep_merge, dump_config, load_config, parse_overrides
from histoldm.fileio import require_writable

C = TypeVar("C", bound=BaseModel)


def add_command(
    sub: Any,
    name: str,
    help: str,
    example: str,
    run: Callable[[argparse.Namespace], int],
    config: type[BaseModel] | None = None,
    **derive: Any,
) -> argparse.ArgumentParser:
    """A subparser whose --help ends with an example invocation.

    config: the model whose fields become the options (see _flags.add_config_flags, which takes
    `derive`), plus --config/--set. The options are built on first use of this subcommand only, so
    that `histoldm --help` and other commands do not pay for building them.
    """

    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        populate=None if config is None else functools.partial(_add_options, model=config, derive=derive),
    )
    parser.set_defaults(func=run)
    return parser


def _add_options(parser: argparse.ArgumentParser, model: type[BaseModel], derive: dict[str, Any]) -> None:
    add_config_flags(parser, model, **derive)
    add_config_options(parser)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML config file, or a shipped config's name (`histoldm config list`); options given on the command "
        "line override it",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE",
        help="override one config key (repeatable; dotted keys for nested fields); "
        "wins over an option for the same key",
    )  # fmt: skip


def resolve_config(args: argparse.Namespace, model: type[C]) -> C:
    """Config = defaults <- --config YAML <- options given on the command line <- --set pairs."""
    overrides = deep_merge(given_flags(args), parse_overrides(getattr(args, "overrides", None)))
    return load_config(model, getattr(args, "config", None), overrides)


@dataclass(frozen=True)
class StageCommand:
    """A subcommand that runs one stage from its config: options derived from `config`, `run` called with
    the resolved config, `report` printing its result (it may return an exit code). A None result is a
    non-main process under accelerate launch: the main one reports."""

    name: str
    help: str
    example: str
    config: type[BaseModel]
    run: Callable[[Any], Any]  # imports the stage's run function when called and returns its result
    report: Callable[[Any, Any], int | None]
    dry_run: bool = False  # --dry-run prints the resolved config (YAML, loadable with --config) and exits
    # How the options are derived (histoldm.commands._flags.add_config_flags):
    positional: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    nested: dict[str, str | tuple[str, FieldInfo]] = field(default_factory=dict)
    converters: dict[str, Callable[[str], Any]] = field(default_factory=dict)
    # Config keys naming where the stage writes; the first one set is checked writable before the stage runs.
    writes: tuple[str, ...] = ("out",)
    # What Ctrl-C leaves behind and how to go on, formatted with the config's fields ({out}).
    interrupted: str = "what finished before it is kept; run the same command again"
    torch_threads: bool = False  # a torch stage: --threads, set before the stage runs

    def add_to(self, sub: Any) -> None:
        parser = add_command(
            sub,
            self.name,
            self.help,
            self.example,
            self.execute,
            config=self.config,
            positional=self.positional,
            aliases=self.aliases,
            nested=self.nested,
            converters=self.converters,
        )
        if self.dry_run:
            parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        if self.torch_threads:
            parser.add_argument(
                "--threads",
                type=int,
                default=None,
                metavar="N",
                help="torch CPU threads (default: OMP_NUM_THREADS when set, else one per core no other process "
                "is using at the start); recorded in the manifest",
            )

    def execute(self, args: argparse.Namespace) -> int:
        cfg = resolve_config(args, self.config)
        if self.dry_run and args.dry_run:
            print(dump_config(cfg), end="")
            return 0
        self.check_output(cfg)
        try:
            with self.cpu_threads(args):
                result = self.run(cfg)
        except KeyboardInterrupt:
            close_progress_bars()
            kept = self.interrupted.format(**dict(cfg))
            print(f"histoldm {self.name}: interrupted; {kept}", file=sys.stderr)
            return 130
        if result is None:  # a non-main process under accelerate launch
            return 0
        return int(self.report(result, cfg) or 0)

    @contextmanager
    def cpu_threads(self, args: argparse.Namespace) -> Iterator[None]:
        """A torch stage runs with --threads CPU threads (default: histoldm.devices.default_cpu_threads); the
        caller's count comes back afterwards, so a stage called in-process changes nothing around it."""
        if not self.torch_threads:
            yield
            return
        import torch

        from histoldm.devices import set_cpu_threads

        before = torch.get_num_threads()
        set_cpu_threads(args.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def check_output(self, cfg: BaseModel) -> None:
        """Refuse an output nothing can be written to (read-only, no rights, a file in the way) before
        any compute, naming the path as the user typed it."""
        where = next((getattr(cfg, key) for key in self.writes if getattr(cfg, key, None) is not None), None)
        if where is not None:
            require_writable(where)


def close_progress_bars() -> None:
    """End the open tqdm bars, so that a last message stands on a line of its own and no bar is redrawn after it."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()

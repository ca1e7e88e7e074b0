"""The `histoldm` command: subcommands discovered from histoldm.commands (stages.py: one row per stage).

Each subcommand module defines `register(subparsers)`; heavy imports stay inside the command
functions so that `--help` is instant. Expected mistakes (UserError) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

from histoldm import __version__, commands
from histoldm.errors import UserError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print only the error, as one line, exit 2.

    `populate` adds a subcommand's options on its first use (parsing or help): they are derived from
    its stage's config model, and importing every stage for any command would cost seconds.
    """

    def __init__(
        self, *args: Any, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _populated(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self._populated()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populated()
        return super().format_help()

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="histoldm",
        description="Text-conditioned latent diffusion for histopathology. Run `histoldm demo` for an end-to-end tour.",
    )
    parser.add_argument("--version", action="version", version=f"histoldm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"histoldm.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as e:
        sys.stderr.write(f"histoldm {args.command}: error: {e}\n")
        return 2
    except (IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as e:
        # A path of the wrong kind (--out naming a file, a folder given as a file) or without rights:
        # the user's to fix, and the OS message names the path.
        why = {
            FileExistsError: "exists as a file, expected a folder",
            IsADirectoryError: "is a folder, expected a file",
            NotADirectoryError: "a file stands where a folder is needed",
        }.get(type(e), e.strerror)
        sys.stderr.write(f"histoldm {args.command}: error: {e.filename}: {why}\n")
        return 2
    except OSError as e:
        if (
            e.errno != errno.EROFS
        ):  # a read-only file system the output check could not foresee (mounted read-only since)
            raise
        sys.stderr.write(f"histoldm {args.command}: error: {e.filename}: read-only file system\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"histoldm {args.command}: interrupted; finished work is kept, re-run to resume\n")
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

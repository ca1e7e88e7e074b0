"""CLI subcommands, one module per stage; each module defines register(subparsers)."""

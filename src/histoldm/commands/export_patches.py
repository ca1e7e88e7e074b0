"""`histoldm export-patches`: one split's real patches as an image folder for fid-ref and evaluate --real."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "export-patches", "Write the real patches of one split (e.g. test) with an index.jsonl; --size resizes them to the model's resolution.",
                "histoldm export-patches work/store --captions work/captions.parquet --split work/split.json --out work/test_patches --size 256", run,
                config="histoldm.data.export:ExportPatchesConfig", positional="store")


def run(args: argparse.Namespace) -> int:
    from histoldm.data.export import ExportPatchesConfig, run_export_patches

    result = run_export_patches(resolve_config(args, ExportPatchesConfig))
    print(f"{result.images} patches in {result.out}")
    return 0

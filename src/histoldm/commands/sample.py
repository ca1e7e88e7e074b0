"""`histoldm sample`: generate one image per caption from a trained model bundle."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "sample", "Generate one PNG per caption with DDIM (50 steps as PathLDM; guidance 1.75, the seed paper's: PathLDM's notebook used 1.5); resumable, shardable with accelerate launch.",
                "histoldm sample --checkpoint runs/00001-pathldm --captions captions.parquet --split split.json --out samples", run,
                config="histoldm.sampling.run:SampleConfig")


def run(args: argparse.Namespace) -> int:
    from histoldm.sampling.run import SampleConfig, run_sample

    result = run_sample(resolve_config(args, SampleConfig))
    if result is None:  # a non-main process under accelerate launch
        return 0
    print(
        f"{result.out}: {result.images} images ({result.n_new} new), {result.n_truncated} captions truncated, "
        f"{result.skipped} input rows skipped" + (f", grid {result.grid}" if result.grid else "")
    )
    return 0

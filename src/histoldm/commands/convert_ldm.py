"""`histoldm convert-ldm`: a PathLDM (CompVis/Lightning) checkpoint -> a checked model bundle."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "convert-ldm", "Convert a CompVis latent-diffusion checkpoint (PathLDM's release) into a model bundle, checking every tensor.",
                "histoldm convert-ldm pathldm_plip.ckpt --out models/pathldm-plip", run,
                config="histoldm.models.convert:ConvertConfig", positional="checkpoint")


def run(args: argparse.Namespace) -> int:
    from histoldm.models.convert import ConvertConfig, run_convert

    result = run_convert(resolve_config(args, ConvertConfig))
    counts = ", ".join(f"{comp} {c['tensors']} tensors / {c['parameters'] / 1e6:.2f}M" for comp, c in result.converted.items())
    print(f"bundle {result.bundle}: {counts}; {result.skipped} checkpoint entries skipped (see {result.report})")
    for reason, n in result.skipped_by_reason.items():
        print(f"  skipped {n}: {reason}")
    return 0

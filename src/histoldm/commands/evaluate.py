"""`histoldm evaluate` (metrics of a generated set) and `histoldm fid-ref` (reference statistics once per split)."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "evaluate", "FID, KID and precision/recall of generated images, each with its protocol; optional memorisation and adherence checks.",
                "histoldm evaluate --real data/test_patches --fake samples/ --out eval/ --train-real data/train_patches", run,
                config="histoldm.evaluate.run:EvaluateConfig")
    add_command(sub, "fid-ref", "Reference FID statistics (mu, sigma; pytorch-fid .npz layout, protocol recorded) of a folder of real images.",
                "histoldm fid-ref data/test_patches --out stats/test.npz", run_ref,
                config="histoldm.evaluate.run:FidRefConfig", positional="images")


def run(args: argparse.Namespace) -> int:
    from histoldm.evaluate.run import EvaluateConfig, report_lines, run_evaluate

    cfg = resolve_config(args, EvaluateConfig)
    result = run_evaluate(cfg)
    if result is None:  # a non-main process under accelerate launch
        return 0
    for line in report_lines(result.metrics):
        print(line)
    print(f"wrote {cfg.out / 'metrics.json'}")
    return 0


def run_ref(args: argparse.Namespace) -> int:
    from histoldm.evaluate.run import FidRefConfig, run_fid_ref

    result = run_fid_ref(resolve_config(args, FidRefConfig))
    p = result.protocol
    as_real = p.extend(n_real=p.n, n_fake="-", image_format_real=p.image_format, image_format_fake="-", image_size_real=p.image_size, image_size_fake="-")
    print(f"wrote {result.stats}  [{as_real.line()}]")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable files (listed in the manifest)")
    return 0

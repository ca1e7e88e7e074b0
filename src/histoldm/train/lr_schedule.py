"""The learning-rate schedule both trainers share: linear warm-up, then constant or a cosine to zero.

A cosine to zero at the last step lets a short run such as the demo's take fewer, better steps
(benchmarks/RESULTS.md); constant after warm-up is PathLDM's and stays the default.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from histoldm.train.config import Decay


def lr_factor(warmup_steps: int, decay: Decay, max_steps: int, step: int) -> float:
    """The LR multiplier at `step`: linear warm-up, then constant or a cosine to 0 at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, decay: Decay, max_steps: int
) -> tuple[Any, dict[str, Any]]:
    """The LambdaLR and the settings it is built from (kept in checkpoints, compared on resume)."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup_steps, decay, max_steps)
    )
    settings = {
        "warmup_steps": warmup_steps,
        "decay": decay,
        **({"decay_end_step": max_steps} if decay == "cosine" else {}),
    }
    return scheduler, settings

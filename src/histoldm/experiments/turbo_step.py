"""The demo's `--with-turbo` step: the trained UNet distilled into a few-step student (`histoldm distill`), the
held-out captions sampled with it (`--preset turbo`) with DDIM-50's seed, and evaluated against the same real
held-out patches with the same evaluate config, so its numbers stand beside DDIM-50's.

A re-run continues an unfinished distillation or finds it finished (distill resumes from its last checkpoint,
as train does) and keeps the steps and time of the run that distilled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoldm.evaluate.results import Metrics
from histoldm.experiments.chain import ChainResult, distill_config, kept_measurement, sample_and_evaluate
from histoldm.experiments.config import ModelRecipe
from histoldm.models.bundle import read_bundle_meta
from histoldm.sampling.config import SampleConfig
from histoldm.train.config import DistillConfig
from histoldm.train.distill import run_distill

TURBO_PRESET = "turbo"
TURBO_SAMPLES = "samples-turbo"  # beside DDIM-50's `samples`


@dataclass(frozen=True)
class TurboResult:
    """turbo_step: the student, its distillation cost, its samples of the held-out captions and their metrics."""

    distill_config: DistillConfig
    bundle: Path
    cost: dict[str, Any]  # steps, seconds: the distillation's steps and their wall time (the session that ended it)
    samples: Path
    sample_config: SampleConfig
    metrics: Metrics


def _distilled_steps(bundle: Path) -> int | None:
    """Steps of the student in `bundle` (None: no student exported yet)."""
    return read_bundle_meta(bundle).trained_steps if bundle.is_dir() else None


def turbo_step(work: Path, *, result: ChainResult, recipe: ModelRecipe) -> TurboResult:
    """Distil `result`'s trained UNet on its own caches (WORK/run-turbo), sample its held-out captions with the
    student (WORK/samples-turbo) and evaluate them (WORK/eval-turbo) as `result`'s DDIM-50 set was."""
    work = Path(work)
    cfg = distill_config(recipe, result.train.bundle, work / "run-turbo", result.train_config)
    finished_before = _distilled_steps(cfg.run_dir / "model") == cfg.max_steps
    distilled = run_distill(cfg)
    cost = kept_measurement(
        work / "distill-cost.json",
        lambda: {"steps": distilled.steps, "seconds": round(distilled.seconds, 1)},
        finished_before,
    )
    sample_cfg, evaluated = sample_and_evaluate(
        distilled.bundle, work / TURBO_SAMPLES, work / "eval-turbo", like=result, recipe=recipe, preset=TURBO_PRESET
    )
    return TurboResult(cfg, distilled.bundle, cost, sample_cfg.out, sample_cfg, evaluated.metrics)

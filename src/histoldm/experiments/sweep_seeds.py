"""The sweep's rows across seeds: per budget, each metric's mean beside every seed's value, and whether the
difference from the largest budget stands out of the noise. One seed's number says little at demo scale
(a tiny model, a few dozen held-out images), so a budget counts as better or worse only where its mean
differs from the largest budget's by more than the metric's noise: the largest spread between the seeds
of any budget, and for FID and KID also the largest seed-to-seed floor."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

FLOORS = {"fid": "fid_floor", "kid_mean": "kid_floor"}
BASE_METRICS = ["fid", "kid_mean", "adherence_tumor_auroc", "adherence_til_auroc"]
SEEDS_NOTE = (
    "Across seeds: per budget, each metric's mean over the seeds with every seed's value in brackets (seeds in "
    "the order given). noise: the largest spread between the seeds of one budget, for FID and KID at least the "
    "largest seed-to-seed floor; `*` marks a mean that differs from the largest budget's by more than the noise. "
    "Differences without `*` are inside the noise."
)


def seed_metrics(facts: Sequence[str]) -> list[str]:
    """The columns compared across seeds: FID, KID, tumor/TIL adherence and each fact's adherence (by caption
    and by drawn truth) and ceiling."""
    return [*BASE_METRICS, *(f"adherence_{f}_{s}" for f in facts for s in ("auroc", "truth_auroc", "real_auroc"))]


def _values(rows: list[dict[str, Any]], metric: str) -> list[float]:
    return [float(r[metric]) for r in rows if r.get(metric) is not None]


def metric_noise(by_budget: dict[int, list[dict[str, Any]]], metric: str) -> float | None:
    """The metric's noise: the largest seed spread of any budget, for FID/KID at least the largest floor."""
    spreads = [max(v) - min(v) for rows in by_budget.values() if len(v := _values(rows, metric)) > 1]
    floors = [f for rows in by_budget.values() for f in _values(rows, FLOORS[metric])] if metric in FLOORS else []
    return max([*spreads, *floors], default=None)


def _cell(values: list[float], reference: float | None, noise: float | None, digits: int) -> str:
    """`mean (a / b)`, with `*` where the mean is farther than the noise from the reference mean."""
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    cell = f"{mean:.{digits}f} ({' / '.join(f'{v:.{digits}f}' for v in values)})"
    beyond = reference is not None and noise is not None and abs(mean - reference) > noise
    return cell + (" *" if beyond else "")


def across_seeds(rows: list[dict[str, Any]], metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The across-seeds table (columns, rows): one row per budget, then the noise of each metric."""
    by_budget: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_budget.setdefault(r["budget"], []).append(r)
    reference = by_budget[max(by_budget)]
    noise = {m: metric_noise(by_budget, m) for m in metrics}
    digits = {m: 5 if m.startswith("kid") else 2 if m == "fid" else 3 for m in metrics}
    table = []
    for budget, group in by_budget.items():
        cells = []
        for m in metrics:
            ref = statistics.mean(v) if (v := _values(reference, m)) and group is not reference else None
            cells.append(_cell(_values(group, m), ref, noise[m], digits[m]))
        table.append([str(budget), *cells])
    table.append(["noise", *("n/a" if noise[m] is None else f"{noise[m]:.{digits[m]}f}" for m in metrics)])
    return ["budget", *metrics], table

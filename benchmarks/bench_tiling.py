"""Tiling throughput on the bundled CC0 slide: patches per second per core.

Tiles the CMU slide (2220 x 2967 at 20x) several times into fresh stores with one worker, so the
number is per core; reports the median over repeats. Usage:
    python benchmarks/bench_tiling.py [--magnification 10] [--size 256] [--overlap 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from histoldm.assets import asset_path
from histoldm.data.config import TileConfig
from histoldm.data.tiling import run_tile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--magnification", type=float, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--min-tissue", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rates, loop_rates, n = [], [], 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TileConfig(
                slides=asset_path("cmu_slide"),
                out=Path(tmp) / "store",
                magnification=args.magnification,
                size=args.size,
                overlap=args.overlap,
                min_tissue=args.min_tissue,
                workers=1,
            )
            t0 = time.perf_counter()
            result = run_tile(cfg)
            rates.append(result.patches / (time.perf_counter() - t0))
            slide = next(iter(result.per_slide.values()))
            n, candidates = result.patches, slide["candidates"]
            loop_rates.append(candidates / slide["seconds_patches"])
    print(
        f"magnification {args.magnification:g}x, size {args.size}, overlap {args.overlap}: {n} patches per run; "
        f"{statistics.median(rates):.1f} patches/s per core (median of {args.repeats}; min {min(rates):.1f}, max "
        f"{max(rates):.1f}) end to end incl. slide open + thumbnail; patch loop alone (read, resize, tissue check, PNG "
        f"write): {statistics.median(loop_rates):.1f} candidate patches/s ({candidates} candidates)"
    )


if __name__ == "__main__":
    main()

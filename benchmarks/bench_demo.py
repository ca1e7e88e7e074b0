"""Time `histoldm demo` per stage on this machine, idle or beside one CPU-heavy process.

Runs the demo into OUT (fresh: OUT must not exist, so no stage is resumed), then writes OUT/bench.md:
the demo's own per-stage table (OUT/timing.json, from the stage manifests), the machine (CPU model,
cores, torch threads), the host's load average before and after, and the quality the speed must not
cost (FID, tumor/TIL adherence AUROC and p). `--compete` starts one busy process (a pure-Python loop:
one core's worth of work, like a compile or another job) for the whole run and stops it after.

    python benchmarks/bench_demo.py --out /tmp/bench-idle
    python benchmarks/bench_demo.py --out /tmp/bench-busy --compete
    python benchmarks/bench_demo.py --out /tmp/bench-t2 --threads 2 -- --set recipe.train.max_steps=600
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUSY_LOOP = "while True:\n    pass"


def run_demo(out: Path, threads: int | None, extra: list[str], compete: bool) -> float:
    """The demo as a user runs it (its own process), optionally beside one busy process; wall seconds."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from histoldm.cli import main; sys.exit(main())",
        "demo",
        "--out",
        str(out),
    ]
    cmd += ["--threads", str(threads)] if threads else []
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if compete else None
    try:
        started = time.time()
        subprocess.run(cmd + extra, check=True)
        return time.time() - started
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def quality(out: Path) -> list[str]:
    metrics = json.loads((out / "model" / "eval" / "metrics.json").read_text())
    lines = [f"- FID {metrics['fid']['value']:.2f}, KID {metrics['kid'].get('mean', float('nan')):.4f}"]
    for attr, r in metrics.get("adherence", {}).get("by_attribute", {}).items():
        if "auroc" in r:
            lines.append(f"- {attr} adherence AUROC {r['auroc']:.3f} (p = {r['p_value']:.3g})")
    return lines


def bench_table(
    out: Path, wall_s: float, load_before: tuple[float, ...], load_after: tuple[float, ...], compete: bool
) -> str:
    timing = json.loads((out / "timing.json").read_text())
    total = timing["total_s"]
    rows = [
        *timing["stages_s"].items(),
        ("other (real-image adherence, loss curve, between stages)", timing["other_s"]),
    ]
    lines = [
        f"`histoldm demo` on {timing['machine_text']}, {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"{'beside one busy process (pure-Python loop)' if compete else 'no competing process started'}; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min).",
        "",
        "| stage | seconds | share |",
        "|---|---|---|",
        *(f"| {name} | {s:.1f} | {100 * s / total:.0f}% |" for name, s in rows),
        f"| **total (demo's own clock)** | **{total:.1f}** | 100% |",
        "",
        f"Process wall time including Python start-up: {wall_s:.1f} s.",
        "",
        *quality(out),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="demo output folder (must not exist: a fresh run)")
    p.add_argument("--threads", type=int, help="torch CPU threads for the demo (default: the demo's own)")
    p.add_argument("--compete", action="store_true", help="run one busy process beside the demo")
    p.add_argument("extra", nargs="*", help="more demo arguments, after --")
    args = p.parse_args()
    if args.out.exists():
        print(f"{args.out}: exists; the benchmark needs a fresh folder (a re-run would resume stages)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    wall_s = run_demo(args.out, args.threads, args.extra, args.compete)
    table = bench_table(args.out, wall_s, load_before, os.getloadavg(), args.compete)
    (args.out / "bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""sample-region on a trained demo model: crop FID/KID against the patch sampler's FID and its seed-to-seed
floor at the same N, the seam score against real slide regions, map agreement against the patch
sampler's adherence AUROC, and the time and peak memory of one region at several sizes.

    # DEMO: a finished `histoldm demo --out DEMO`
    nice -n 10 python benchmarks/bench_region.py --demo DEMO --out OUT

Quality: one region of --quality-size px per held-out case summary and map pattern (--per-case), sampled
with the demo's own sampler settings (DEMO/model/samples/settings.json), each map four quadrants
(histoldm.experiments.demo_region.quadrant_map: tumour high on one half, TIL high on one half, orientation
by region), then `evaluate-region` against the demo's real held-out patches (N crops = N real, the demo's
FID protocol). Timing: each size in a fresh process (`histoldm sample-region`, constant map), wall time
and the process's peak RSS (os.wait4).
Writes OUT/bench_region.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def timed_region(bundle: Path, out: Path, size: int, preset: str, summary: str, mpp: float, threads: int) -> dict:
    """One region in a fresh process: wall seconds and that process's peak RSS."""
    cmd = [
        sys.executable,
        "-m",
        "histoldm.cli",
        "sample-region",
        "--checkpoint",
        str(bundle),
        "--out",
        str(out),
        "--size",
        str(size),
        "--level",
        "high/low",
        "--summary",
        summary,
        "--preset",
        preset,
        "--mpp",
        str(mpp),
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    output = proc.stdout.read().decode(errors="replace")
    if status != 0:
        raise RuntimeError(f"sample-region {size} px failed:\n{output[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "size": size,
        "preset": preset,
        "wall_s_process": round(wall, 1),
        "region_s": round(manifest["produced"]["seconds"][0], 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a finished demo folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quality-size", type=int, default=512)
    ap.add_argument("--per-case", type=int, default=2, help="regions per held-out case (map orientations)")
    ap.add_argument("--timing-sizes", default="512,1024,2048")
    ap.add_argument("--timing-preset", default="fast", choices=["paper", "fast"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared box: more only spin-wait)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    from histoldm.data.captions import load_summaries
    from histoldm.evaluate.config import RegionEvalConfig
    from histoldm.evaluate.region import run_evaluate_region
    from histoldm.experiments.chain import model_mpp
    from histoldm.experiments.demo_region import quadrant_map
    from histoldm.models.bundle import read_bundle_meta
    from histoldm.sampling.config import RegionConfig
    from histoldm.sampling.region_run import geometry, run_sample_region

    demo, out = args.demo, args.out
    out.mkdir(parents=True, exist_ok=True)
    bundle = demo / "model" / "run" / "model"
    meta = read_bundle_meta(bundle)
    settings = json.loads((demo / "model" / "samples" / "settings.json").read_text())
    sampler = {
        "steps": settings["steps"],
        "guidance": settings["guidance"],
        "solver": settings["solver"],
        "eta": settings["eta"],
        "guidance_interval": settings["guidance_interval"],
    }
    split = json.loads((demo / "data" / "split.json").read_text())["cases"]["test"]
    summaries = load_summaries(demo / "summaries.jsonl")
    probe = RegionConfig(checkpoint=bundle, out=out / "regions", level="high/low", size=args.quality_size)
    geo = geometry(probe, bundle, meta)
    mpp = model_mpp(demo / "data" / "store", meta.latent.size * geo.factor)
    grid = geo.grid(args.quality_size)
    lines = []
    for case in split:
        for k in range(args.per_case):
            path = out / f"map-{case}-{k}.csv"
            path.write_text(quadrant_map(len(grid), len(grid[0]), k))
            lines.append({"id": f"{case}-{k}", "summary": summaries.get(case, ""), "label_map": path.name})
    (out / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    started = time.perf_counter()
    made = run_sample_region(
        RegionConfig(
            checkpoint=bundle,
            out=out / "regions",
            regions=out / "regions.jsonl",
            size=args.quality_size,
            mpp=mpp,
            device="cpu",
            **sampler,
        )
    )
    sample_s = time.perf_counter() - started
    patch_eval = json.loads((demo / "model" / "eval" / "metrics.json").read_text())
    floor = json.loads((demo / "model" / "noise-floor" / "metrics.json").read_text())
    protocol = patch_eval["fid"]["protocol"]
    evaluated = run_evaluate_region(
        RegionEvalConfig(
            regions=out / "regions",
            real=demo / "model" / "real-held-out",
            out=out / "eval",
            fid_method=protocol.get("fid_method", "sqrtm"),
            resize=protocol["resize"],
            kid_subset_size=patch_eval["kid"]["protocol"]["kid_subset_size"],
            real_regions=16,
        )
    ).metrics
    crop, seam, agree = evaluated["crop"], evaluated["seam"], evaluated["map_agreement"]["by_attribute"]
    patch_adherence = patch_eval.get("adherence", {}).get("by_attribute", {})
    quality = {
        "regions": made.finished,
        "size": args.quality_size,
        "mpp": mpp,
        "sampler": sampler,
        "seconds_per_region": made.seconds_per_region,
        "sample_s": round(sample_s, 1),
        "window_px": geo.window * geo.factor,
        "stride_px": geo.stride * geo.factor,
        "crop_fid": crop["fid"]["value"],
        "crop_kid": crop["kid"].get("mean"),
        "n_crops": crop["n_crops"],
        "n_real": crop["n_real"],
        "patch_fid": patch_eval["fid"]["value"],
        "patch_kid": patch_eval["kid"].get("mean"),
        "patch_n": patch_eval["fid"]["protocol"]["n_fake"],
        "floor_fid": floor["fid"]["value"],
        "floor_kid": floor.get("kid", {}).get("mean"),
        "seam_generated": seam["generated"],
        "seam_real": seam["real"],
        "seam_ratio": seam["ratio"],
        "seam_real_mpp": seam["real_mpp_by_size"],
        "map_auroc": {a: r.get("auroc") for a, r in agree.items()},
        "map_p": {a: r.get("p_value") for a, r in agree.items()},
        "patch_auroc": {a: r.get("auroc") for a, r in patch_adherence.items()},
    }
    quality["crop_minus_patch_fid"] = quality["crop_fid"] - quality["patch_fid"]
    quality["within_floor"] = abs(quality["crop_minus_patch_fid"]) <= quality["floor_fid"]
    print(json.dumps(quality, indent=1), flush=True)

    timing = []
    for size in [int(s) for s in args.timing_sizes.split(",") if s]:
        row = timed_region(
            bundle, out / f"timing-{size}", size, args.timing_preset, summaries.get(split[0], ""), mpp, args.threads
        )
        side = size // geo.factor
        row |= {
            "windows": sum(len(r) for r in geo.grid(size)),
            "latent_canvas_mib": round(meta.latent.channels * side * side * 4 / 2**20, 2),
            "band_accumulators_mib": round(size * geo.decode_tile * geo.factor * 16 / 2**20, 2),
            "output_uint8_mib": round(size * size * 3 / 2**20, 1),
        }
        timing.append(row)
        print(json.dumps(row), flush=True)
    (out / "bench_region.json").write_text(
        json.dumps({"quality": quality, "timing": timing, "command": " ".join(sys.argv)}, indent=1)
    )

    q = quality
    print(
        f"\n| metric | regions | patch sampler |\n|---|---|---|\n| FID (N={q['n_crops']} crops / N={q['patch_n']} "
        f"patches) | {q['crop_fid']:.2f} | {q['patch_fid']:.2f} (seed-to-seed floor {q['floor_fid']:.2f}) |\n| KID | "
        f"{q['crop_kid']:.4f} | {q['patch_kid']:.4f} (floor {q['floor_kid']}) |\n| seam score (real slide regions "
        f"{q['seam_real']:.3f}) | {q['seam_generated']:.3f} (ratio {q['seam_ratio']:.3f}) | |\n"
        + "".join(f"| map agreement AUROC {a} | {v} | {q['patch_auroc'].get(a)} |\n" for a, v in q["map_auroc"].items())
    )
    print(
        "| size px | windows | preset | s per region | peak RSS GiB | latent canvas MiB | decode band MiB | uint8 "
        "output MiB |\n|---|---|---|---|---|---|---|---|"
    )
    for r in timing:
        print(
            f"| {r['size']} | {r['windows']} | {r['preset']} | {r['region_s']} | {r['peak_rss_gib']} | "
            f"{r['latent_canvas_mib']} | {r['band_accumulators_mib']} | {r['output_uint8_mib']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fewer UNet passes at equal quality? The fast sampling settings against DDIM-50 on the same seeds,
beside the DDIM-50 seed-to-seed noise. CPU, demo scale: a trained demo model and its held-out
captions, each repeated under several ids (per-image seeds come from (seed, id)).

For every setting, `histoldm sample` writes a set with seed 0; DDIM-50 also with seed 1. Each set is
evaluated against DDIM-50 seed 0 (FID/KID/precision-recall, `histoldm evaluate`), so the DDIM-50
seed 1 row is the noise floor: a setting whose FID and KID sit inside it gives images distributed as
DDIM-50's. A markdown table with UNet passes per image and wall time goes to OUT/quality.md.

    python -u benchmarks/bench_sampler_quality.py --checkpoint DEMO/model/run --captions held_out.jsonl \\
        --text-cache DEMO/model/text-cache --repeat 14 --out /tmp/quality
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SETTINGS = {  # name -> SampleConfig fields; "ddim50" is the paper's default, "fast" the preset as shipped
    "ddim50": {"preset": "paper"},
    "fast": {"preset": "fast"},
    "dpm++20": {"solver": "dpmpp", "steps": 20},
    "dpm++20 interval": {"solver": "dpmpp", "steps": 20, "guidance_interval": (44, 634)},
    "dpm++12": {"solver": "dpmpp", "steps": 12},
    "dpm++10 interval": {"solver": "dpmpp", "steps": 10, "guidance_interval": (44, 634)},
    "unipc10 interval": {"solver": "unipc", "steps": 10, "guidance_interval": (44, 634)},
}


def repeated_captions(captions: Path, repeat: int, out: Path) -> Path:
    """Every caption `repeat` times under ids id-r0, id-r1, ...: distinct seeds for one caption."""
    from histoldm.sampling.captions_io import read_caption_items

    items, _ = read_caption_items(captions)
    path = out / "captions_repeated.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"{it.id}-r{k}", "caption": it.caption}) + "\n" for it in items for k in range(repeat)
        )
    )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="model bundle or training run folder")
    ap.add_argument("--captions", type=Path, required=True, help="held-out captions (.txt, .jsonl or captions.parquet)")
    ap.add_argument("--text-cache", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=14)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of " + ", ".join(SETTINGS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from histoldm.evaluate.config import EvaluateConfig
    from histoldm.evaluate.run import run_evaluate
    from histoldm.sampling.config import SampleConfig
    from histoldm.sampling.run import run_sample
    from histoldm.sampling.solvers import passes_per_image

    args.out.mkdir(parents=True, exist_ok=True)
    captions = repeated_captions(args.captions, args.repeat, args.out)
    runs = [(name, 0) for name in args.settings.split(",")] + [("ddim50", 1)]
    rows = []
    for name, seed in runs:
        cfg = SampleConfig(
            checkpoint=args.checkpoint,
            captions=captions,
            text_cache=args.text_cache,
            out=args.out / f"{name.replace(' ', '_')}-seed{seed}",
            seed=seed,
            device="cpu",
            **SETTINGS[name],
        )
        started = time.perf_counter()
        result = run_sample(cfg)
        wall = time.perf_counter() - started
        passes = passes_per_image(cfg.solver, cfg.steps, cfg.guidance_interval)
        rows.append(
            {
                "setting": name,
                "seed": seed,
                "solver": cfg.solver,
                "steps": cfg.steps,
                "interval": cfg.guidance_interval,
                "unet_passes": passes,
                "images": result.images,
                "sample_s": round(wall, 1),
                "out": cfg.out,
            }
        )
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in rows[-1].items()}), flush=True)
    reference = next(r["out"] for r in rows if r["setting"] == "ddim50" and r["seed"] == 0)
    lines = [
        "| setting vs DDIM-50 seed 0 | seed | UNet passes / image | FID | KID (x 1e-3) | precision / recall | sample "
        "wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["out"] == reference:
            continue
        m = run_evaluate(
            EvaluateConfig(real=reference, fake=r["out"], out=r["out"] / "eval", fid_method="eigh", workers=1)
        ).metrics
        kid, pr = m.kid, m.precision_recall
        lines.append(
            f"| {r['setting']} | {r['seed']} | {r['unet_passes']} | {m.fid.value:.2f} | "
            f"{1e3 * kid.mean:.2f} +- {1e3 * kid.std:.2f} | {pr.precision:.3f} / {pr.recall:.3f} | {r['sample_s']} |"
        )
        print(lines[-1], flush=True)
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

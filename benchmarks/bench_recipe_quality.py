"""Quality of a demo recipe variant: held-out PSNR, FID/KID and condition adherence, one line per run.

Runs the demo's own chain (`prepare_latents`, `train_sample_evaluate`) on the demo's data and summaries,
built once under WORK, with the recipe the demo ships changed by RECIPE (ModelRecipe keys as JSON, e.g.
'{"seed": 1, "train": {"max_steps": 1000}}'). Autoencoders are shared between runs with the same
autoencoder settings (WORK/vae-<hash>/), so a UNet variant costs only its UNet. Appends the result to
WORK/results.jsonl and prints it. The demo's recipe is chosen this way (benchmarks/RESULTS.md):
adherence on 36 held-out images moves by ~0.1 between seeds, so compare variants on two seeds.

    python benchmarks/bench_recipe_quality.py --work /tmp/rq --tag shipped-s1 --recipe '{"seed": 1}'
    python benchmarks/bench_recipe_quality.py --work /tmp/rq --tag steps800 \\
        --recipe '{"train": {"max_steps": 800}}' --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path


def run(work: Path, tag: str, recipe_keys: dict, threads: int | None) -> dict:
    from histoldm.config import load_config
    from histoldm.devices import set_cpu_threads
    from histoldm.errors import UserError
    from histoldm.experiments.chain import prepare_latents, summarize, train_sample_evaluate
    from histoldm.experiments.config import DemoConfig
    from histoldm.experiments.demo_data import build_demo_data

    # the demo's recipe with these keys over it; a bad --recipe key: one line, before any compute
    demo = load_config(DemoConfig, overrides={"out": work, "recipe": recipe_keys})
    recipe = demo.recipe
    used = set_cpu_threads(threads)
    data = build_demo_data(work / "data", demo.data)
    summaries = summarize(data["reports"], work / "summaries.jsonl", demo.budget)
    vae_key = json.dumps(
        {
            "autoencoder": recipe.autoencoder,
            "image_size": recipe.image_size,
            "seed": recipe.seed,
            "train_vae": recipe.train_vae,
        },
        sort_keys=True,
    )
    vae_work = work / f"vae-{hashlib.sha256(vae_key.encode()).hexdigest()[:10]}"
    if (vae_work / tag).exists():
        raise UserError(f"{vae_work / tag}: exists; choose another --tag")
    started = time.time()
    latents = prepare_latents(vae_work, data["store"], data["split"], recipe)
    result = train_sample_evaluate(
        vae_work / tag,
        store=data["store"],
        split=data["split"],
        summaries=summaries,
        latents=latents.latents,
        recipe=recipe,
        name=tag,
    )
    adherence = result.metrics.adherence.by_attribute if result.metrics.adherence else {}
    return {
        "tag": tag,
        "folder": str(vae_work / tag),
        "recipe": recipe_keys,
        "threads": used,
        "autoencoder_psnr": latents.autoencoder_psnr,
        "fid": result.metrics.fid.value,
        "kid": result.metrics.kid.mean,
        **{f"{attr}_auroc": adherence[attr].auroc if attr in adherence else None for attr in ("tumor", "til")},
        **{f"{attr}_p": adherence[attr].p_value if attr in adherence else None for attr in ("tumor", "til")},
        "wall_s": round(time.time() - started, 1),
        "train_img_s": result.train.img_s,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the shared data, autoencoders and runs")
    p.add_argument("--tag", required=True, help="name of this run (a folder under the autoencoder's)")
    p.add_argument("--recipe", default="{}", help="ModelRecipe keys as JSON, over the demo's recipe")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the demo's free-core rule)")
    args = p.parse_args()
    try:
        keys = json.loads(args.recipe)
    except json.JSONDecodeError as e:
        print(f"--recipe: not JSON ({e})", file=sys.stderr)
        return 2
    from histoldm.errors import UserError

    try:
        line = run(args.work, args.tag, keys, args.threads)
    except UserError as e:
        print(str(e), file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    with (args.work / "results.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

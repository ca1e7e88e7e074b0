"""Loss curves of the tiny UNet from scratch: diffusers' default init vs `model.init: compvis`.

    python benchmarks/compare_init.py WORK   # WORK holds a demo store/, split.json, summaries.jsonl

Builds demo-scale caches in WORK (kl-f4-tiny latents at 64 px, MiniLM text), then trains both inits
back to back on the same data and seeds, and writes WORK/compare.json. Results: benchmarks/RESULTS.md.
"""

import json
import sys
from pathlib import Path

import torch

from histoldm.config import load_config
from histoldm.data.captions import run_captions
from histoldm.data.config import CaptionsConfig
from histoldm.text.cache import run_encode_text
from histoldm.text.config import EncodeTextConfig
from histoldm.train.config import EncodeLatentsConfig, TrainConfig
from histoldm.train.latents import run_encode_latents
from histoldm.train.trainer import run_train

torch.set_num_threads(1)  # a tiny model on a shared CPU: extra threads only contend
work = Path(sys.argv[1])
if not (work / "latents" / "meta.json").is_file():
    run_encode_latents(
        EncodeLatentsConfig(
            store=work / "store", vae="kl-f4-tiny", out=work / "latents", image_size=64, batch_size=32, workers=0
        )
    )
    run_captions(
        CaptionsConfig(store=work / "store", summaries=work / "summaries.jsonl", out=work / "captions.parquet")
    )
    run_encode_text(
        EncodeTextConfig(
            captions=work / "captions.parquet",
            text_encoder="minilm",
            mode="truncate",
            max_length=64,
            out=work / "text-cache",
        )
    )
results = {}
for seed in (0, 1):
    for init in ("diffusers", "compvis"):
        cfg = {
            "name": f"{init}-{seed}",
            "run_dir": str(work / "runs" / f"{init}-{seed}"),
            "seed": seed,
            "max_steps": 300,
            "batch_size": 32,
            "precision": "fp32",
            "cpu": True,
            "ema": False,
            "log_every": 20,
            "checkpoint_every": 300,
            "keep_checkpoints": 1,
            "data": {
                "latents": str(work / "latents"),
                "text_cache": str(work / "text-cache"),
                "captions": str(work / "captions.parquet"),
                "split": str(work / "split.json"),
                "workers": 0,
            },
            "model": {"unet_preset": "tiny", "init": init},
            "optim": {"lr": 5e-4, "warmup_steps": 50},
        }
        run = run_train(load_config(TrainConfig, None, cfg))
        stats = [json.loads(line) for line in (Path(run.run_dir) / "stats.jsonl").read_text().splitlines()]
        results[f"{init}-{seed}"] = [round(s["loss"], 4) for s in stats]
        print(init, seed, results[f"{init}-{seed}"], flush=True)
(work / "compare.json").write_text(json.dumps(results, indent=1))

"""`histoldm sample`: generate one image per caption from a trained model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options
from histoldm.config import DTYPE_CHOICES


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "sample",
        "Generate one PNG per caption with DDIM (50 steps as PathLDM; guidance 1.75, the seed paper's: PathLDM's notebook used 1.5); resumable, shardable with accelerate launch.",
        "histoldm sample --checkpoint runs/00001-pathldm --captions captions.parquet --split split.json --out samples",
    )
    p.add_argument("--checkpoint", type=Path, help="model bundle folder, or a training run folder (uses RUN/model/)")
    p.add_argument("--captions", type=Path, help=".txt (one per line), .jsonl (id, caption) or captions.parquet")
    p.add_argument("--prompt", help="one caption instead of --captions")
    p.add_argument("--num-images", type=int, help="images for --prompt (default 1)")
    p.add_argument("--split", type=Path, help="split.json: sample only the cases of --split-name (captions.parquet)")
    p.add_argument("--split-name", help="default test")
    p.add_argument("--out", type=Path, help="output folder (re-run into it to resume)")
    p.add_argument("--preset", choices=["paper", "fast"],
                   help="paper (default): DDIM 50 steps, guidance 1.75; fast: DPM-Solver++ 2M, fewer steps, guidance on an interval "
                        "(docs/sampling.md); flags given beside it win")
    p.add_argument("--steps", type=int, help="solver steps (default 50)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 1.75; 1 = conditional only)")
    p.add_argument("--guidance-interval", type=int, nargs=2, metavar=("LO", "HI"),
                   help="guide only at training timesteps LO..HI (0-999); elsewhere the unconditional UNet pass is skipped")
    p.add_argument("--solver", choices=["ddim", "dpmpp", "unipc"], help="ddim (default), dpmpp = DPM-Solver++ 2M or unipc = UniPC (try --steps 20)")
    p.add_argument("--eta", type=float, help="DDIM eta (default 0)")
    p.add_argument("--batch-size", type=int, help="images per UNet call (default 16)")
    p.add_argument("--seed", type=int, help="base seed; each image is seeded from (seed, id) (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="default auto: bfloat16 on a CUDA device that supports it, else float32")
    p.add_argument("--precision", choices=["default", "pathldm"], help="pathldm: PathLDM's numerics (fp32 text encoder, fp32 UNet under fp16 autocast, 8-bit by truncation); default: ours")
    p.add_argument("--text-encoder", help="text encoder to use (default: the checkpoint's); must match the checkpoint's fingerprint")
    p.add_argument("--text-cache", type=Path, help="encode-text folder to take caption embeddings from instead of the encoder")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the UNet (pays off for long runs)")
    p.add_argument("--compile-mode", choices=["full", "fullgraph", "blocks"], help="whole UNet (default), whole UNet as one graph, or block by block")
    p.add_argument("--compile-tuning", choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode: reduce-overhead = CUDA graphs; max-autotune = tuned kernels + CUDA graphs")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.sampling.run import SampleConfig, run_sample

    names = ["checkpoint", "captions", "prompt", "num_images", "split", "split_name", "out", "preset", "steps", "guidance", "guidance_interval",
             "solver", "eta", "batch_size", "seed", "device", "dtype", "precision", "text_encoder", "text_cache", "compile", "compile_mode",
             "compile_tuning"]  # fmt: skip
    cfg = resolve_config(args, SampleConfig, {name: getattr(args, name) for name in names})
    result = run_sample(cfg)
    if result is None:  # a non-main process under accelerate launch
        return 0
    print(
        f"{result.out}: {result.images} images ({result.n_new} new), {result.n_truncated} captions truncated, "
        f"{result.skipped} input rows skipped" + (f", grid {result.grid}" if result.grid else "")
    )
    return 0

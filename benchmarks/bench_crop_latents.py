"""How close a crop taken in latent space is to encoding the cropped pixels (train `data.crop`).

For each tile: z = encode(tile); A = decode(z cropped to a random window on the stride grid);
B = decode(encode(the same pixel crop)). Prints PSNR(A, B) and each decode's PSNR against the pixel
crop, over the whole window and over its interior (a border of `margin` px left out), where the two
differ only through the encoder's receptive field reaching past the crop's edge.

    python benchmarks/bench_crop_latents.py AUTOENCODER --tiles 16 --tile 448 --crop 256
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean().item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def main() -> None:
    from histoldm.data.synthetic import render_tile
    from histoldm.models.autoencoder import decode, encode, load_autoencoder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("autoencoder", help="preset, folder or hub id")
    p.add_argument("--tiles", type=int, default=16)
    p.add_argument("--tile", type=int, default=448)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--margin", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    ae = load_autoencoder(args.autoencoder)
    stride, rng = ae.downsample, np.random.default_rng(args.seed)
    rows = []
    with torch.no_grad():
        for i in range(args.tiles):  # synthetic H&E-like tiles at 1 um/px (PathLDM's 10x)
            rgb = render_tile(rng.uniform(), rng.uniform(), rng.uniform(0, 0.3), (args.seed, i), size=args.tile)
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
            oy, ox = (int(v) * stride for v in rng.integers(0, (args.tile - args.crop) // stride + 1, 2))
            pixels = x[..., oy : oy + args.crop, ox : ox + args.crop]
            z = encode(ae, x)
            w = args.crop // stride
            a = decode(ae, z[..., oy // stride : oy // stride + w, ox // stride : ox // stride + w])
            b = decode(ae, encode(ae, pixels))
            m = args.margin
            inner = (..., slice(m, -m), slice(m, -m))
            rows.append([psnr(a, b), psnr(a[inner], b[inner]), psnr(a, pixels), psnr(b, pixels)])
    mean = np.mean(rows, axis=0)
    print(f"{args.autoencoder}: {args.tiles} tiles of {args.tile} px, {args.crop} px crops on the stride {stride}")
    print(
        f"PSNR latent-crop decode vs pixel-crop decode: {mean[0]:.2f} dB (interior, {args.margin} px border left out: "
        f"{mean[1]:.2f} dB)"
    )
    print(f"PSNR against the pixel crop: latent-crop decode {mean[2]:.2f} dB, pixel-crop decode {mean[3]:.2f} dB")


if __name__ == "__main__":
    main()

"""Regions larger than the model (MultiDiffusion, Bar-Tal et al. 2023): windows of the model's latent
size over a latent canvas, their predictions blended at every solver step, and a tiled, blended decode.

The region denoiser is one more `eps_fn(x, t) -> eps` over the whole canvas, so every solver in
`histoldm.sampling.solvers` runs on it unchanged. Each window has its own denoiser (classifier-free
guidance over its own caption); a canvas pixel's eps is the weighted mean of the eps of the windows
covering it. Averaging eps is the same as averaging x0 (PixCell's choice): at a step t,
x0 = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t) is affine in eps with the same coefficients for every
window, so the weighted mean of the windows' x0 is the x0 of their weighted mean eps; every solver
here is a function of (x, eps) only. The weight is a Hann window (sin^2) that falls to ~0 at a
window's edge: a window entering or leaving the mean at its border changes nothing there (no step, no
seam), and at stride = window / 2 the weights of a row of windows sum to one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from histoldm.sampling.solvers import EpsFn

Window = tuple[int, int]  # (row, column) of a window's top-left corner on the canvas


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets along one axis: every `stride`, the last moved to end at the edge (so any length >= window
    is covered exactly). The label map has one cell per offset."""
    if length < window:
        raise ValueError(f"canvas of {length} is smaller than a window of {window}")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_grid(height: int, width: int, window: int, stride: int) -> list[list[Window]]:
    """Windows as a grid (rows of (row, column) offsets): cell (i, j) of a label map is window [i][j]."""
    cols = window_starts(width, window, stride)
    return [[(r, c) for c in cols] for r in window_starts(height, window, stride)]


def hann_weight(size: int) -> torch.Tensor:
    """(size, size) float32 weight, sin^2 along each axis, ~0 at the edges and 1 in the middle."""
    ramp = torch.sin(math.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size) ** 2
    return torch.outer(ramp, ramp).to(torch.float32)


def weight_sum(windows: Sequence[Window], window: int, height: int, width: int, weight: torch.Tensor) -> torch.Tensor:
    """(height, width): the summed weight of the windows over each pixel (the mean's denominator)."""
    total = torch.zeros(height, width, dtype=torch.float32)
    for r, c in windows:
        total[r : r + window, c : c + window] += weight
    if not bool((total > 0).all()):
        raise ValueError("windows leave part of the canvas uncovered")
    return total


def blended_eps_fn(
    groups: Sequence[tuple[Sequence[Window], EpsFn]],
    window: int,
    height: int,
    width: int,
    weight: torch.Tensor | None = None,
) -> EpsFn:
    """The canvas denoiser: x (1, C, height, width) -> weighted mean of the windows' eps.

    `groups`: batches of windows, each with the denoiser of that batch (x (B, C, window, window), t) ->
    eps, e.g. `classifier_free_guidance` over the batch's captions; one call per batch per step.
    """
    weight = hann_weight(window) if weight is None else weight
    total = weight_sum([w for ws, _ in groups for w in ws], window, height, width, weight)

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        acc = torch.zeros(x.shape[1:], dtype=torch.float32, device=x.device)
        wgt = weight.to(x.device)
        for windows, fn in groups:
            crops = torch.stack([x[0, :, r : r + window, c : c + window] for r, c in windows])
            eps = fn(crops, t).to(torch.float32)
            for (r, c), e in zip(windows, eps):
                acc[:, r : r + window, c : c + window] += e * wgt
        return (acc / total.to(x.device))[None]

    return eps_fn


def decode_tiled(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    factor: int,
    tile: int,
    stride: int,
    batch: int = 4,
    finish: Callable[[torch.Tensor], torch.Tensor] = lambda band: band,
) -> torch.Tensor:
    """(1, C, h, w) latents -> (3, h * factor, w * factor) images, decoded `batch` tiles of `tile` latent
    pixels at a time and blended with the Hann weight in pixel space: the decoder never sees more than a
    tile, and its edge effects fall where the weight is ~0. Blending runs down the region in bands one
    tile high; each band's finished rows go through `finish` (e.g. to uint8) into the output at once, so
    the float accumulators stay one tile row high whatever the region's size."""
    _, _, h, w = latents.shape
    size = min(tile, h, w)
    rows = window_grid(h, w, size, stride)
    weight = hann_weight(size * factor)
    band_h, width = size * factor, w * factor
    out: torch.Tensor | None = None
    acc = torch.zeros(3, band_h, width, dtype=torch.float32)
    total = torch.zeros(band_h, width, dtype=torch.float32)
    base = 0  # output row of the band's first row

    def flush(upto: int) -> None:  # rows base..upto-1 are final: no later tile reaches them
        nonlocal out, acc, total, base
        n = upto - base
        if n <= 0:
            return
        done = finish(acc[:, :n] / total[:n])
        out = torch.empty((done.shape[0], h * factor, width), dtype=done.dtype) if out is None else out
        out[:, base:upto] = done
        acc = torch.cat([acc[:, n:], torch.zeros(3, n, width)], dim=1)
        total = torch.cat([total[n:], torch.zeros(n, width)])
        base = upto

    for row in rows:
        flush(row[0][0] * factor)
        for i in range(0, len(row), batch):
            chunk = row[i : i + batch]
            images = decode_fn(torch.stack([latents[0, :, r : r + size, c : c + size] for r, c in chunk])).float().cpu()
            for (r, c), image in zip(chunk, images):
                y, x = r * factor - base, c * factor
                acc[:, y : y + band_h, x : x + band_h] += image * weight
                total[y : y + band_h, x : x + band_h] += weight
    flush(h * factor)
    return out

"""PIL's bicubic resize of float images, reproduced in torch so it can run on the GPU.

The FID protocol's default resize is PIL bicubic per float channel (clean-fid style). On a GPU
machine, resizing with PIL in worker processes limits the whole evaluation to what the CPUs manage
(1,460 img/s on 15 workers against 3,760 img/s for the network alone, benchmarks/RESULTS.md). Here
the same arithmetic runs on tensors: PIL's coefficients (Resample.c, `precompute_coeffs`, in double
precision), a horizontal pass then a vertical one, each summing its taps in PIL's order in float64
and rounding to float32 as PIL stores them. Elementwise IEEE float64 arithmetic gives the same bits
on CPU and GPU. Against PIL itself (tests/test_evaluate.py): bit for bit for square images (what the
tiler and the sampler write) and for images wider than tall; for some taller-than-wide images Pillow
13 resamples vertically first, and pixels can differ by up to two float32 roundings (3.1e-5 on the
0-255 scale), far below anything FID resolves.
"""

from __future__ import annotations

import functools
import math

import torch

_A = -0.5  # PIL's bicubic parameter


def _bicubic(x: float) -> float:
    """PIL's bicubic_filter, operation for operation."""
    x = -x if x < 0.0 else x
    if x < 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * _A
    return 0.0


@functools.lru_cache(maxsize=32)
def bicubic_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights, each (n_out, K), of PIL's bicubic resampling from n_in to n_out
    samples; padding taps point at a valid sample with weight 0 (adds exactly nothing)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    inverse = 1.0 / filterscale
    index = torch.zeros(n_out, ksize, dtype=torch.long)
    weight = torch.zeros(n_out, ksize, dtype=torch.float64)
    for out in range(n_out):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = [_bicubic((x - center + 0.5) * inverse) for x in range(lo, hi)]
        total = 0.0
        for w in taps:  # sequential, as PIL accumulates its normaliser
            total += w
        if total != 0.0:
            taps = [w / total for w in taps]
        index[out] = lo
        index[out, : hi - lo] = torch.arange(lo, hi)
        weight[out, : hi - lo] = torch.tensor(taps, dtype=torch.float64)
    return index, weight


def _resample_last_axis(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """One PIL pass along the last axis: float64 sum over the taps in order, stored as float32."""
    index, weight = (t.to(x.device) for t in bicubic_taps(x.shape[-1], n_out))
    x = x.double()
    total = x[..., index[:, 0]] * weight[:, 0]
    for k in range(1, index.shape[1]):
        total = total + x[..., index[:, k]] * weight[:, k]
    return total.float()


def pil_bicubic_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., H, W) float32 -> (..., height, width): PIL's `Image.resize(BICUBIC)` of each mode-"F"
    plane, horizontal pass first, each pass only where the size changes (module docstring: where
    this is bit for bit)."""
    x = x.float()
    if x.shape[-1] != width:
        x = _resample_last_axis(x, width)
    if x.shape[-2] != height:
        x = _resample_last_axis(x.transpose(-1, -2), height).transpose(-1, -2)
    return x

"""Issues 9 and 20 in one run on one card: the anchor's baseline (shared/bench/gpu_anchor.py,
re-implemented) beside the project's own trainer (`run_train` on synthetic caches), sampler
(`ImageSampler`, the paper's DDIM-50, the `fast` preset and a distilled student's `turbo` preset
(4 consistency steps), eager and compiled), encode-latents
(VQ-f4, a PNG patch store -> latent cache) and a torch-profiler table of one guided DDIM step.

Baseline cases: a bare fwd+bwd+fused-AdamW step under bf16 autocast (one-head and 64-channel-head
UNet, batch 32, context 154) and the anchor's DDIM-50 + guidance loop with bf16 weights at batch 128.
The presets `pathldm` / `pathldm-h64` build exactly the anchor's UNet configurations.

Our cases: `run_train` for the `pathldm` preset at batch 32, bf16, with levers (channels_last,
gradient checkpointing of all or only the high-resolution levels, regional / full torch.compile, the
h64 preset); img/s is the trainer's own mean over log windows after the first (warm-up and
compilation excluded). `ImageSampler` (text cache -> guidance -> DDIM-50 g=1.75 or DPM-Solver++ 20 ->
decode) with bf16 UNet weights at a large batch, with the projected time for 200,000 images.

MFU = model FLOPs (torch.utils.flop_counter, forward+backward, without checkpoint recompute) per
second / 790 TFLOP/s, the H100's measured dense bf16 matrix rate (989 nominal).

Each case runs in a guard: a failure (OOM, compile error) is recorded and the run goes on. After
every case the JSON ($OUT/bench_gpu.json) and markdown table ($OUT/bench_gpu.md) are rewritten, so a
run killed at its time limit still returns what it finished. --quick skips cases that would not fit
its time budget (estimates per case; compilation last).

    PYTHONUNBUFFERED=1 python -u benchmarks/bench_gpu.py --quick          # one H100, ~6 minutes
    python -u benchmarks/bench_gpu.py                                      # every case, ~10 minutes
    python -u benchmarks/bench_gpu.py --tiny                               # tiny preset on CPU (tests, ~1 min)
    python -u benchmarks/bench_gpu.py --quick --cases "compile,h64"        # only cases naming these
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

PEAK_TFLOPS = 790.0  # H100 dense bf16, measured (8192^3 matmul); nominal 989
IMAGES_TO_PROJECT = 200_000
# The targets (H200/H100): DDIM-50 2x the anchor loop, the fast preset 50 img/s, training 350 img/s,
# <= 9 GiB at >= 250 img/s, encode-latents 500 img/s per card
TARGETS = {
    "train_img_s": 350.0,
    "train_peak_gib": 9.0,
    "train_img_s_within_9gib": 250.0,
    "ddim50_img_s": 20.0,
    "fast_img_s": 50.0,
    "encode_latents_img_s": 500.0,
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and repetitions of one mode (full, quick, tiny)."""

    mode: str
    device: str
    precision: str  # bf16 on the GPU; fp32 for --tiny (CPUs without bf16 units emulate it, 20x slower)
    faithful: str  # preset of the paper-faithful UNet
    h64: str  # preset with 64-channel heads
    autoencoder: str
    size: int  # latent side
    ctx: int  # caption tokens
    dim: int  # caption embedding width
    train_batch: int
    train_steps: int
    long_train_steps: int  # the plain paper-faithful case: a few hundred steps
    log_every: int
    base_warm: int
    base_iters: int
    base_sample_batch: int
    sample_batch: int
    sample_repeats: int
    ddim_steps: int
    dpm_steps: int
    warm_steps: int  # solver steps of the warm-up call (compiles, fills caches)
    fast_steps: int | None  # steps of the fast preset; None = the preset's own
    encode_n: int  # patches in the encode-latents store
    encode_batch: int
    workers: int  # training data loader (encode-latents decodes with all CPUs but one)
    budget_s: float  # no case is started whose estimate would end past this
    region_px: int = 4096  # side of the sample-region case's region


def make_profile(args) -> Profile:
    if args.tiny:
        p = Profile(
            "tiny",
            "cpu",
            "fp32",
            "tiny",
            "tiny",
            "vq-f4-tiny",
            8,
            8,
            16,
            4,
            4,
            6,
            2,
            1,
            2,
            2,
            2,
            1,
            3,
            3,
            1,
            3,
            16,
            8,
            0,
            float("inf"),
            64,
        )
    elif args.quick:
        p = Profile(
            "quick",
            "cuda",
            "bf16",
            "pathldm",
            "pathldm-h64",
            "vq-f4",
            64,
            154,
            512,
            32,
            45,
            300,
            15,
            3,
            10,
            128,
            256,
            1,
            50,
            20,
            2,
            None,
            4096,
            256,
            4,
            480.0,
        )
    else:
        p = Profile(
            "full",
            "cuda",
            "bf16",
            "pathldm",
            "pathldm-h64",
            "vq-f4",
            64,
            154,
            512,
            32,
            150,
            300,
            30,
            3,
            20,
            128,
            256,
            2,
            50,
            20,
            2,
            None,
            8192,
            256,
            4,
            540.0,
        )
    updates = {
        k: v
        for k, v in {
            "train_steps": args.train_steps,
            "sample_batch": args.sample_batch,
            "budget_s": args.budget_s,
        }.items()
        if v is not None
    }
    return dataclasses.replace(p, **updates)


@dataclasses.dataclass
class Case:
    name: str
    group: str  # baseline-train, baseline-sample, train, sample
    run: Callable[[], dict]
    quick: bool  # part of --quick
    est_s: float  # rough H100 wall time, for the --quick budget
    needs_cuda: bool = False  # compile cases: the trainer ignores compile on CPU


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn: Callable[[], object], iters: int, warm: int, device: str) -> float:
    for _ in range(warm):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _reset_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> dict:
    if device != "cuda":
        return {"peak_alloc_gib": None, "peak_reserved_gib": None}
    return {
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


KERNEL_KINDS = (  # first match wins; names of cuDNN / cuBLAS / inductor / aten kernels
    ("attention", ("flash", "fmha", "attention", "softmax", "bmm", "baddbmm")),
    ("convolution", ("conv", "cudnn", "implicit", "winograd", "fprop", "dgrad", "wgrad", "sm90_xmma")),
    ("matmul", ("gemm", "matmul", "addmm", "mm", "linear", "cutlass")),
    ("normalization", ("group_norm", "groupnorm", "layer_norm", "layernorm", "native_group", "native_layer", "norm")),
    (
        "elementwise / copies",
        ("elementwise", "vectorized", "copy", "cat", "add", "mul", "silu", "gelu", "triton", "fill", "unrolled"),
    ),
)


def kernel_kinds(kernels: list[tuple[str, float]], total: float) -> dict[str, float]:
    """Share of the profiled time per kind of kernel (by name), the rest as 'other'."""
    shares: dict[str, float] = {}
    for name, t in kernels:
        lower = name.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in lower for w in words)), "other")
        shares[kind] = shares.get(kind, 0.0) + t / total
    return shares


class Bench:
    def __init__(self, profile: Profile, out: Path, work: Path, selected: list[str] | None):
        self.p, self.out, self.work, self.selected = profile, out, work, selected
        self.results: list[dict] = []
        self.train_flops: dict[str, float] = {}  # preset -> fwd+bwd FLOPs per image
        self.unet_flops: dict[str, float] = {}  # preset -> one forward per image
        self.started = time.perf_counter()
        self._data = None
        self._runs = 0
        self._eager_images: dict[
            tuple, torch.Tensor
        ] = {}  # (preset, sampling, channels_last) -> images of the eager case

    # ---------- shared inputs ----------
    def data(self):
        """Synthetic latent + text caches and captions.parquet, in the documented formats (written once)."""
        from histoldm.train.synthetic import write_synthetic_caches

        if self._data is None:
            p = self.p
            section = write_synthetic_caches(
                self.work / "caches", max(4 * p.train_batch, 512), 3, p.size, p.ctx, p.dim, captions=64
            )
            self._data = section.model_copy(update={"workers": p.workers})
        return self._data

    def build_unet(self, preset: str):
        from histoldm.models.presets import build_unet

        with torch.device(self.p.device):  # initialise on the device: seconds instead of minutes of CPU init
            return build_unet(preset, context_dim=self.p.dim, latent_channels=3, sample_size=self.p.size)

    def count_train_flops(self, preset: str, model=None) -> float:
        """Forward+backward FLOPs per image under bf16 autocast (as gpu_anchor.py counts them)."""
        from torch.utils.flop_counter import FlopCounterMode

        if preset not in self.train_flops:
            p, b = self.p, 2
            m = model if model is not None else self.build_unet(preset)
            x = torch.randn(b, 3, p.size, p.size, device=p.device)
            c = torch.randn(b, p.ctx, p.dim, device=p.device)
            t = torch.randint(0, 1000, (b,), device=p.device)
            with FlopCounterMode(display=False) as counter:
                with torch.autocast(p.device, dtype=torch.bfloat16, enabled=p.precision == "bf16"):
                    loss = torch.nn.functional.mse_loss(m(x, t, c).sample.float(), x.float())
                loss.backward()
            m.zero_grad(set_to_none=True)
            self.train_flops[preset] = counter.get_total_flops() / b
        return self.train_flops[preset]

    def count_unet_flops(self, preset: str, model) -> float:
        """One forward pass per image (sampling calls it 2 x steps times per image with guidance)."""
        from torch.utils.flop_counter import FlopCounterMode

        if preset not in self.unet_flops:
            p, b = self.p, 2
            dtype = next(model.parameters()).dtype
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(
                    torch.randn(b, 3, p.size, p.size, device=p.device, dtype=dtype),
                    torch.full((b,), 500, device=p.device),
                    torch.randn(b, p.ctx, p.dim, device=p.device, dtype=dtype),
                )
            self.unet_flops[preset] = counter.get_total_flops() / b
        return self.unet_flops[preset]

    # ---------- baseline (gpu_anchor.py) ----------
    def baseline_train(self, preset: str) -> dict:
        p = self.p
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as the anchor
        try:
            _reset_memory(p.device)
            m = self.build_unet(preset)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=p.device == "cuda" or None)
            x = torch.randn(p.train_batch, 3, p.size, p.size, device=p.device)
            c = torch.randn(p.train_batch, p.ctx, p.dim, device=p.device)
            t = torch.randint(0, 1000, (p.train_batch,), device=p.device)

            def step():
                with torch.autocast(p.device, dtype=torch.bfloat16, enabled=p.precision == "bf16"):
                    loss = torch.nn.functional.mse_loss(m(x, t, c).sample.float(), x.float())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()
            flops = self.count_train_flops(preset, m)
            _reset_memory(p.device)
            sec = _median_time(step, p.base_iters, p.base_warm, p.device)
            return {
                "preset": preset,
                "batch": p.train_batch,
                "s_per_iter": sec,
                "img_s": p.train_batch / sec,
                "flops_per_img": flops,
                **_peak(p.device),
            }
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    def baseline_sample(self, preset: str) -> dict:
        """The anchor's loop: bf16 weights, cond+uncond in one call, a DDIM-like update, fixed t."""
        p, bs = self.p, self.p.base_sample_batch
        _reset_memory(p.device)
        dtype = _dtype(p.precision)
        m = self.build_unet(preset).eval().to(dtype)
        x = torch.randn(bs, 3, p.size, p.size, device=p.device, dtype=dtype)
        c = torch.randn(2 * bs, p.ctx, p.dim, device=p.device, dtype=dtype)
        t = torch.full((2 * bs,), 500, device=p.device)

        @torch.no_grad()
        def run(steps: int):
            y = x
            for _ in range(steps):
                u, k = m(torch.cat([y, y]), t, c).sample.chunk(2)
                y = y - 0.01 * (u + 1.75 * (k - u))
            return y

        run(p.warm_steps)
        sec = _median_time(lambda: run(p.ddim_steps), p.sample_repeats, 0, p.device)
        flops = 2 * p.ddim_steps * self.count_unet_flops(preset, m)
        return {
            "preset": preset,
            "batch": bs,
            "steps": p.ddim_steps,
            "s_per_iter": sec,
            "img_s": bs / sec,
            "flops_per_img": flops,
            **_peak(p.device),
        }

    # ---------- ours: the trainer ----------
    def ours_train(self, preset: str, steps: int | None = None, **model: object) -> dict:
        from histoldm.train.config import ModelSection, TrainConfig
        from histoldm.train.trainer import run_train

        p = self.p
        self._runs += 1
        run_dir = self.work / f"run-{self._runs:02d}"
        cfg = TrainConfig(
            name="bench",
            run_dir=run_dir,
            resume="none",
            max_steps=steps or p.train_steps,
            batch_size=p.train_batch,
            precision=p.precision,
            cpu=p.device == "cpu",
            log_every=p.log_every,
            checkpoint_every=10**9,
            data=self.data(),
            model=ModelSection(unet_preset=preset, **model),
        )
        flops = self.train_flops.get(preset)
        _reset_memory(p.device)
        try:
            result = run_train(cfg)
            losses = [json.loads(line)["loss"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)  # checkpoint + bundle: GBs at full size
        if flops is None:
            _reset_memory(p.device)
            flops = self.count_train_flops(preset)
        peak = result.peak_memory
        return {
            "preset": preset,
            "batch": p.train_batch,
            "steps": result.steps,
            "loss_first_window": losses[0],
            "loss_last_window": losses[-1],
            "s_per_iter": p.train_batch / result.img_s,
            "img_s": result.img_s,
            "flops_per_img": flops,
            "peak_alloc_gib": peak["allocated_gib"],
            "peak_reserved_gib": peak["reserved_gib"],
            "config": cfg.model.model_dump(mode="json", exclude_defaults=True),
        }

    # ---------- ours: the sampler ----------
    def sample_config(self, sampling: str, **update):
        """The paper's settings or the fast preset, at this profile's batch (and, --tiny, its few steps)."""
        from histoldm.sampling.config import SampleConfig

        p = self.p
        steps = {"paper": p.ddim_steps, "fast": p.fast_steps, "turbo": None}[sampling]
        fields = {"steps": steps} if steps is not None else {}
        return SampleConfig(
            checkpoint=self.work,
            out=self.work / "samples",
            prompt="bench",
            preset=sampling,
            batch_size=p.sample_batch,
            **fields,
            **update,
        )

    def ours_sample(
        self,
        preset: str,
        sampling: str,
        compile_mode: str | None = None,
        tuning: str = "default",
        channels_last: bool = False,
    ) -> dict:
        from histoldm.devices import sampling_numerics
        from histoldm.models.autoencoder import decode, load_autoencoder
        from histoldm.models.speed import compile_unet
        from histoldm.models.student import make_student
        from histoldm.sampling.consistency import student_eps_fn
        from histoldm.sampling.context import CacheText
        from histoldm.sampling.guidance import unet_eps_fn
        from histoldm.sampling.run import ImageSampler
        from histoldm.sampling.solvers import passes_per_image, training_alphas_cumprod
        from histoldm.text.cache import TextCache

        p, bs = self.p, self.p.sample_batch
        cfg = self.sample_config(
            sampling,
            compile=bool(compile_mode),
            compile_mode=compile_mode or "full",
            compile_tuning=tuning,
            channels_last=channels_last,
        )
        student = sampling == "turbo"  # a distilled student: the UNet plus its guidance-scale input, one pass a step
        passes = passes_per_image(cfg.solver, cfg.steps, cfg.guidance_interval)
        data = self.data()
        _reset_memory(p.device)
        device = torch.device(p.device)
        unet = self.build_unet(preset).eval().requires_grad_(False).to(_dtype(p.precision))
        flops = passes * self.count_unet_flops(preset, unet)
        if student:
            with torch.device(p.device):
                unet = make_student(unet).eval().requires_grad_(False).to(_dtype(p.precision))
        if device.type == "cuda" and channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        if compile_mode:
            unet = compile_unet(unet, compile_mode, tuning=tuning)
        ae = load_autoencoder(p.autoencoder, device=device)
        alphas = training_alphas_cumprod().to(device)
        eps_fn = (
            student_eps_fn(unet, "epsilon", alphas, cfg.guidance, unet.config.time_cond_proj_dim)
            if student
            else unet_eps_fn(unet, "epsilon", alphas)
        )
        sampler = ImageSampler(
            cfg,
            CacheText(TextCache.open(data.text_cache)),
            eps_fn,
            ae,
            (3, p.size, p.size),
            1.0,
            device,
            sampling_numerics("default", str(_dtype(p.precision)).removeprefix("torch."), device),
            solver_steps=50 if student else None,
        )
        captions, seeds = [f"caption {i % 64}" for i in range(bs)], list(range(bs))
        started = time.perf_counter()
        # Warm-up: compiled, the whole run (every batch shape the guidance interval makes is compiled);
        # eager, a few steps.
        warm = (
            sampler
            if compile_mode
            else dataclasses.replace(sampler, cfg=cfg.model_copy(update={"steps": p.warm_steps}))
        )
        warm(captions, seeds)
        warm_s = time.perf_counter() - started
        images: list[torch.Tensor] = []
        sec = _median_time(lambda: images.append(sampler(captions, seeds)[0]), p.sample_repeats, 0, p.device)
        same = self.compare_to_eager((preset, sampling, channels_last), images[-1], eager=not compile_mode)
        latents = torch.randn(bs, 3, p.size, p.size, device=device)
        decode_sec = _median_time(lambda: [decode(ae, z) for z in latents.split(cfg.decode_batch)], 1, 1, p.device)
        img_s = bs / sec
        return {
            "preset": preset,
            "batch": bs,
            "solver": cfg.solver,
            "steps": cfg.steps,
            "guidance_interval": cfg.guidance_interval,
            "unet_passes": passes,
            "s_per_iter": sec,
            "img_s": img_s,
            "flops_per_img": flops,
            "warmup_s": warm_s,
            "decode_s": decode_sec,
            "img_s_without_decode": bs / max(sec - decode_sec, 1e-9),
            "hours_for_200k": IMAGES_TO_PROJECT / img_s / 3600,
            **same,
            **_peak(p.device),
        }

    def ours_region(self, preset: str, sampling: str) -> dict:
        """Seconds for one `sample-region` region of p.region_px (windows of the model's latent size at half-window
        stride, guided, blended; tiled decode), after a warm-up region of 3x3 windows at one step."""
        from histoldm.devices import sampling_numerics
        from histoldm.models.autoencoder import load_autoencoder
        from histoldm.sampling.config import RegionConfig
        from histoldm.sampling.context import CacheText
        from histoldm.sampling.guidance import unet_eps_fn, unet_passes
        from histoldm.sampling.region_map import constant_map
        from histoldm.sampling.region_run import Geometry, RegionSampler, RegionSpec
        from histoldm.sampling.run import ImageSampler
        from histoldm.sampling.solvers import solver_timesteps, training_alphas_cumprod
        from histoldm.text.cache import TextCache

        p = self.p
        cfg = self.sample_config(sampling)
        region = RegionConfig(
            checkpoint=self.work,
            out=self.work / "regions",
            level="high/low",
            template="caption {summary}",
            size=p.region_px,
            preset=sampling,
            steps=cfg.steps,
            batch_size=p.sample_batch,
            decode_batch=16,
        )
        device = torch.device(p.device)
        _reset_memory(p.device)
        unet = self.build_unet(preset).eval().requires_grad_(False).to(_dtype(p.precision))
        ae = load_autoencoder(p.autoencoder, device=device)
        numerics = sampling_numerics("default", str(_dtype(p.precision)).removeprefix("torch."), device)
        model = ImageSampler(
            cfg,
            CacheText(TextCache.open(self.data().text_cache)),
            unet_eps_fn(unet, "epsilon", training_alphas_cumprod().to(device)),
            ae,
            (3, p.size, p.size),
            1.0,
            device,
            numerics,
        )
        geo = Geometry(p.size, p.size // 2, ae.downsample, p.size, p.size // 2)
        sampler = RegionSampler(region, geo, model, numerics)
        side = p.region_px // geo.factor
        windows = sum(len(row) for row in geo.grid(p.region_px))

        def spec(size: int) -> RegionSpec:
            grid = geo.grid(size)
            return RegionSpec("bench", "0", constant_map("high/low", region.levels, (len(grid), len(grid[0]))), size)

        warm = RegionSampler(region.model_copy(update={"steps": 1}), geo, model, numerics)
        warm(spec(p.size * geo.factor * 2), 0)
        started = time.perf_counter()
        image = sampler(spec(p.region_px), 0)
        _sync(p.device)
        sec = time.perf_counter() - started
        passes = unet_passes(solver_timesteps(region.solver, region.steps), region.guidance_interval)
        return {
            "preset": preset,
            "batch": p.sample_batch,
            "solver": region.solver,
            "steps": region.steps,
            "guidance_interval": region.guidance_interval,
            "unet_passes": passes,
            "region_px": p.region_px,
            "latent_side": side,
            "windows": windows,
            "s_per_region": sec,
            "window_passes_per_s": windows * passes / sec,
            "image_shape": list(image.shape),
            **_peak(p.device),
        }

    def compare_to_eager(self, key: tuple, images: torch.Tensor, eager: bool) -> dict:
        """A compiled case's images against the eager case's (same captions, seeds, settings), in 8-bit
        levels: bf16 rounding in a different kernel order moves a few pixels by a level or two."""
        if eager:
            self._eager_images[key] = images
            return {}
        ref = self._eager_images.get(key)
        if ref is None:
            return {"vs_eager": "no eager case of these settings ran first"}
        levels = (images.float().clamp(-1, 1) - ref.float().clamp(-1, 1)).abs() * 127.5
        return {
            "vs_eager_max_levels": float(levels.max()),
            "vs_eager_mean_levels": float(levels.mean()),
            "vs_eager_pct_over_2_levels": float(100 * (levels > 2).float().mean()),
        }

    # ---------- profile and encode-latents ----------
    def profile_ddim_step(self, preset: str) -> dict:
        """torch.profiler over one guided DDIM step (one UNet call on cond+uncond) at the sampling batch:
        the top kernels by device time, written to profile_ddim_step.txt beside the JSON."""
        from torch.profiler import ProfilerActivity, profile

        from histoldm.sampling.guidance import classifier_free_guidance, unet_eps_fn
        from histoldm.sampling.solvers import sample_ddim, training_alphas_cumprod

        p, bs = self.p, self.p.sample_batch
        device = torch.device(p.device)
        unet = self.build_unet(preset).eval().requires_grad_(False).to(_dtype(p.precision))
        a = training_alphas_cumprod().to(device)
        cond, uncond = torch.randn(bs, p.ctx, p.dim, device=device), torch.randn(1, p.ctx, p.dim, device=device)
        guided = classifier_free_guidance(unet_eps_fn(unet, "epsilon", a), cond, uncond, 1.75)
        x = torch.randn(bs, 3, p.size, p.size, device=device)

        def step():
            return sample_ddim(guided, x, [501], training_alphas_cumprod())

        step(), step()
        _sync(p.device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if p.device == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
            _sync(p.device)
        cuda = p.device == "cuda"
        events = prof.key_averages()
        device_key = (
            "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        )  # renamed in torch 2.4+
        key = device_key if cuda else "self_cpu_time_total"  # self time: kernels, not the ops that launch them
        table = events.table(sort_by=key, row_limit=30, max_name_column_width=90)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "profile_ddim_step.txt").write_text(
            f"one guided DDIM step, {preset}, batch {bs} (UNet batch {2 * bs}), sorted by {key}\n\n{table}\n"
        )
        kernels = [(e.key, getattr(e, key)) for e in events]
        kernels = [(k, t) for k, t in kernels if t > 0]
        total = sum(t for _, t in kernels) or 1.0
        return {
            "preset": preset,
            "batch": bs,
            "step_ms": total / 1e3,
            "by_kind_pct": {kind: round(100 * share, 1) for kind, share in kernel_kinds(kernels, total).items()},
            "top": [
                {"name": k[:120], "ms": t / 1e3, "pct": round(100 * t / total, 1)}
                for k, t in sorted(kernels, key=lambda kt: -kt[1])[:15]
            ],
        }

    def encode_latents(self) -> dict:
        """`run_encode_latents` with VQ-f4 on a PNG patch store (64 synthetic tiles, repeated under new ids:
        the same decode work), 256 px, bf16, against the bare encoder on tensors at the same batch."""
        from histoldm.data.store import patch_table
        from histoldm.data.synthetic import make_synthetic_dataset
        from histoldm.devices import resolve_dtype
        from histoldm.models.autoencoder import encode, load_autoencoder
        from histoldm.tables import read_parquet, write_parquet
        from histoldm.train.config import EncodeLatentsConfig
        from histoldm.train.latents import run_encode_latents

        p = self.p
        store = self.work / "encode-store"
        size = 256 if p.device == "cuda" else 32
        if not (store / "patches.parquet").is_file():
            make_synthetic_dataset(store, 4, min(16, -(-p.encode_n // 4)), size=size)
            rows = read_parquet(store / "patches.parquet", "store").to_pylist()
            many = [
                {**r, "patch_id": f"{r['patch_id']}_r{k}"} for k in range(max(1, p.encode_n // len(rows))) for r in rows
            ]
            write_parquet(store / "patches.parquet", patch_table(many))
        n = read_parquet(store / "patches.parquet", "store").num_rows
        device = torch.device(p.device)
        workers = max(1, (os.cpu_count() or 2) - 1) if p.device == "cuda" else 0
        cfg = EncodeLatentsConfig(
            store=store,
            vae=p.autoencoder,
            out=self.work / f"latents-{time.monotonic_ns()}",
            batch_size=p.encode_batch,
            device=p.device,
            precision="bf16" if p.precision == "bf16" else "fp32",
            workers=workers,
        )
        _reset_memory(p.device)
        started = time.perf_counter()
        result = run_encode_latents(cfg)
        _sync(p.device)
        command_s = time.perf_counter() - started
        ae = load_autoencoder(p.autoencoder, device=device)
        x = torch.rand(p.encode_batch, 3, size, size, device=device) * 2 - 1
        dtype = resolve_dtype(cfg.precision, device, stage="encode-latents precision")

        def bare():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                encode(ae, x)

        sec = _median_time(bare, 3, 1, p.device)
        shutil.rmtree(cfg.out, ignore_errors=True)
        return {
            "preset": p.autoencoder,
            "batch": p.encode_batch,
            "patches": n,
            "latents": result.latents,
            "workers": workers,
            "s_per_iter": command_s,
            "img_s": n / command_s,
            "encoder_only_img_s": p.encode_batch / sec,
            "image_px": size,
            "flops_per_img": 0.0,
            **_peak(p.device),
        }

    # ---------- running ----------
    def cases(self) -> list[Case]:
        """Quick cases first, in priority order (the target rows, then the levers); --quick starts
        none whose estimate would end past the budget, so the tail is what a second run covers."""
        p, F, H = self.p, self.p.faithful, self.p.h64
        cl = {"channels_last": True}  # slower in eager mode (docs/performance.md): one comparison case
        ckpt_all = {"gradient_checkpointing": True}
        ckpt_hi = {"gradient_checkpointing": True, "checkpoint_levels": [0, 1]}
        blocks = {"compile": True, "compile_mode": "blocks"}
        ddim, bs = f"ddim{p.ddim_steps} g1.75", f"bs{p.sample_batch}"
        fast = "fast" + (f"(dpm++{p.fast_steps})" if p.fast_steps else "")
        return [
            Case("baseline train bf16 1-head", "baseline-train", lambda: self.baseline_train(F), True, 8),
            Case(
                f"baseline ddim{p.ddim_steps} cfg bf16 h64 bs{p.base_sample_batch}",
                "baseline-sample",
                lambda: self.baseline_sample(H),
                True,
                16,
            ),
            Case(f"sample pathldm {ddim} {bs}", "sample", lambda: self.ours_sample(F, "paper"), True, 35),
            Case(f"sample pathldm {fast} {bs}", "sample", lambda: self.ours_sample(F, "fast"), True, 12),
            Case(f"sample pathldm turbo(lcm4) {bs}", "sample", lambda: self.ours_sample(F, "turbo"), True, 8),
            Case(f"profile pathldm one guided ddim step {bs}", "profile", lambda: self.profile_ddim_step(F), True, 8),
            Case(f"encode-latents {p.autoencoder} {p.encode_n} PNGs", "encode", self.encode_latents, True, 30),
            Case(
                f"sample pathldm {ddim} {bs} +compile(blocks)",
                "sample",
                lambda: self.ours_sample(F, "paper", "blocks"),
                True,
                80,
                needs_cuda=True,
            ),
            Case(
                f"sample pathldm {fast} {bs} +compile(blocks)",
                "sample",
                lambda: self.ours_sample(F, "fast", "blocks"),
                True,
                30,
                needs_cuda=True,
            ),
            Case(
                f"sample pathldm turbo(lcm4) {bs} +compile(blocks)",
                "sample",
                lambda: self.ours_sample(F, "turbo", "blocks"),
                True,
                20,
                needs_cuda=True,
            ),
            Case(
                "train pathldm +compile(blocks) +ckpt(levels 0,1)",
                "train",
                lambda: self.ours_train(F, **blocks, **ckpt_hi),
                True,
                140,
                needs_cuda=True,
            ),
            Case(
                "train pathldm +compile(blocks) +ckpt(all)",
                "train",
                lambda: self.ours_train(F, **blocks, **ckpt_all),
                True,
                50,
                needs_cuda=True,
            ),
            Case(
                "train pathldm +compile(blocks)",
                "train",
                lambda: self.ours_train(F, **blocks),
                True,
                50,
                needs_cuda=True,
            ),
            Case(
                f"sample pathldm {ddim} {bs} +compile(full, reduce-overhead)",
                "sample",
                lambda: self.ours_sample(F, "paper", "full", "reduce-overhead"),
                True,
                120,
                needs_cuda=True,
            ),
            Case(
                f"sample pathldm {fast} {bs} +compile(full, reduce-overhead)",
                "sample",
                lambda: self.ours_sample(F, "fast", "full", "reduce-overhead"),
                True,
                40,
                needs_cuda=True,
            ),
            Case(
                "train pathldm +compile(fullgraph)",
                "train",
                lambda: self.ours_train(F, compile=True, compile_mode="fullgraph"),
                True,
                150,
                needs_cuda=True,
            ),
            Case("train pathldm", "train", lambda: self.ours_train(F), True, 25),
            Case("train pathldm +ckpt(levels 0,1)", "train", lambda: self.ours_train(F, **ckpt_hi), True, 27),
            Case("baseline train bf16 h64", "baseline-train", lambda: self.baseline_train(H), False, 8),
            Case(
                f"baseline ddim{p.ddim_steps} cfg bf16 1-head bs{p.base_sample_batch}",
                "baseline-sample",
                lambda: self.baseline_sample(F),
                False,
                20,
            ),
            Case(
                f"train pathldm {p.long_train_steps} steps",
                "train",
                lambda: self.ours_train(F, p.long_train_steps),
                False,
                25 + p.long_train_steps * 0.2,
            ),
            Case("train pathldm +CL", "train", lambda: self.ours_train(F, **cl), False, 25),
            Case("train pathldm +ckpt(all)", "train", lambda: self.ours_train(F, **ckpt_all), False, 28),
            Case(
                f"sample pathldm {ddim} {bs} +compile(full, max-autotune)",
                "sample",
                lambda: self.ours_sample(F, "paper", "full", "max-autotune"),
                False,
                400,
                needs_cuda=True,
            ),
            Case(f"sample pathldm-h64 {ddim} {bs}", "sample", lambda: self.ours_sample(H, "paper"), False, 28),
            Case(f"sample pathldm-h64 {fast} {bs}", "sample", lambda: self.ours_sample(H, "fast"), False, 10),
            Case(
                f"sample pathldm {ddim} {bs} +CL",
                "sample",
                lambda: self.ours_sample(F, "paper", channels_last=True),
                False,
                40,
            ),
            Case("train pathldm-h64", "train", lambda: self.ours_train(H), False, 25),
            Case(
                "train pathldm-h64 +compile(blocks) +ckpt(levels 0,1)",
                "train",
                lambda: self.ours_train(H, **blocks, **ckpt_hi),
                False,
                80,
                needs_cuda=True,
            ),
            # scripts/gpu_bench.sh runs these on their own (--cases sample-region): seconds per region
            Case(
                f"sample-region {p.region_px}px {ddim} {bs}", "region", lambda: self.ours_region(F, "paper"), False, 90
            ),
            Case(
                f"sample-region {p.region_px}px dpmpp-interval preset {bs}",
                "region",
                lambda: self.ours_region(F, "fast"),
                False,
                30,
            ),
        ]

    def wanted(self, case: Case) -> bool:
        if self.selected:
            return any(s in case.name for s in self.selected)
        return case.quick or self.p.mode == "full" or self.p.mode == "tiny"

    def run_case(self, case: Case) -> dict:
        """Run one case in a guard: its numbers, or why it was skipped or failed; the run goes on."""
        elapsed = time.perf_counter() - self.started
        record = {"case": case.name, "group": case.group}
        if case.needs_cuda and self.p.device != "cuda":
            record["status"] = "skipped: compile needs CUDA"
        elif self.p.device == "cuda" and elapsed + case.est_s > self.p.budget_s:
            record["status"] = (
                f"skipped: time budget ({elapsed:.0f}s used + ~{case.est_s:.0f}s > {self.p.budget_s:.0f}s)"
            )
        else:
            print(f"\n=== {case.name} (t={elapsed:.0f}s)", flush=True)
            if (
                case.needs_cuda
            ):  # compiled cases: fresh dynamo caches, so earlier cases' graphs do not fill the recompile limit
                torch._dynamo.reset()
            start = time.perf_counter()
            try:
                record.update(case.run())
                record["status"] = "ok"
            except Exception as e:  # noqa: BLE001  (a failed case is a result: OOM, compile error)
                record["status"] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
                record["traceback"] = traceback.format_exc()[-3000:]
            record["wall_s"] = round(time.perf_counter() - start, 1)
            _reset_memory(self.p.device)
        self.derive(record)
        self.results.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "traceback"}), flush=True)
        self.write()
        return record

    def derive(self, r: dict) -> None:
        if r.get("status") != "ok" or "img_s" not in r or not r.get("flops_per_img"):
            return
        r["tflops"] = r["flops_per_img"] * r["img_s"] / 1e12
        r["mfu_pct"] = 100 * r["tflops"] / PEAK_TFLOPS if self.p.device == "cuda" else None
        base = next(
            (b for b in self.results if b["group"] == f"baseline-{r['group']}" and b.get("status") == "ok"), None
        )
        if r["group"] in ("train", "sample") and base:
            r["x_baseline"] = r["img_s"] / base["img_s"]

    def targets(self) -> dict:
        ok = [r for r in self.results if r.get("status") == "ok"]
        train = [r for r in ok if r["group"] == "train" and r["preset"] == self.p.faithful]
        fits = [
            r for r in train if r["peak_alloc_gib"] is not None and r["peak_alloc_gib"] <= TARGETS["train_peak_gib"]
        ]

        def best(rows, key="img_s"):
            row = max(rows, key=lambda r: r[key], default=None)
            return (
                None
                if row is None
                else {"case": row["case"], key: row[key], "peak_alloc_gib": row.get("peak_alloc_gib")}
            )

        def sampler(prefix):
            return best([r for r in ok if r["group"] == "sample" and prefix in r["case"]])

        def met(row, key, target, above=True):
            if row is None:
                return {"target": target, "verdict": "not measured"}
            ok = row[key] >= target if above else row[key] <= target
            return {
                "target": target,
                "best": row,
                "verdict": "met" if ok else f"missed by {100 * abs(1 - row[key] / target):.0f}%",
            }

        ddim, fast = sampler(f"ddim{self.p.ddim_steps} "), sampler("fast")
        encode = best([r for r in ok if r["group"] == "encode"])
        fits_fast = [r for r in fits if r["img_s"] >= TARGETS["train_img_s_within_9gib"]]
        return {
            "train_fastest": best(train),
            "train_fastest_within_9gib": best(fits),
            "train_lowest_memory": min(
                (
                    {"case": r["case"], "peak_alloc_gib": r["peak_alloc_gib"], "img_s": r["img_s"]}
                    for r in train
                    if r["peak_alloc_gib"] is not None
                ),
                key=lambda r: r["peak_alloc_gib"],
                default=None,
            ),
            "ddim_fastest": ddim,
            "fast_fastest": fast,
            "turbo_fastest": sampler("turbo"),  # a distilled student, 4 passes per image (no target set)
            "verdicts": {
                "ddim50_img_s": met(ddim, "img_s", TARGETS["ddim50_img_s"]),
                "fast_img_s": met(fast, "img_s", TARGETS["fast_img_s"]),
                "train_img_s": met(best(train), "img_s", TARGETS["train_img_s"]),
                "train_within_9gib_at_250": met(
                    best(fits_fast) or best(fits), "img_s", TARGETS["train_img_s_within_9gib"]
                ),
                "encode_latents_img_s": met(encode, "img_s", TARGETS["encode_latents_img_s"]),
            },
            "targets": TARGETS,
        }

    def environment(self) -> dict:
        import diffusers

        return {
            "date": datetime.date.today().isoformat(),
            "mode": self.p.mode,
            "device": torch.cuda.get_device_name() if self.p.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": sys.version.split()[0],
            "command": "python -u " + " ".join(sys.argv),
            "peak_tflops_for_mfu": PEAK_TFLOPS,
            "profile": dataclasses.asdict(self.p),
        }

    def table(self) -> str:
        head = (
            "| case | status | preset | batch | img/s | x baseline | TFLOP/s | MFU % | GFLOP/img | peak alloc GiB | "
            "peak reserved GiB | h for 200k | UNet passes | vs eager: max levels, % px > 2 |"
        )
        rows = [head, "|" + "---|" * 14]

        def f(v, fmt):
            return "" if v is None else format(v, fmt)

        for r in self.results:
            status = r["status"] if r["status"] == "ok" else r["status"][:90].replace("|", "/")
            rows.append(
                f"| {r['case']} | {status} | {r.get('preset', '')} | {r.get('batch', '')} | {f(r.get('img_s'), '.1f')} "
                f"| {f(r.get('x_baseline'), '.2f')} | {f(r.get('tflops'), '.0f')} | {f(r.get('mfu_pct'), '.1f')} | "
                f"{f(r.get('flops_per_img') and r['flops_per_img'] / 1e9, '.0f')} | "
                f"{f(r.get('peak_alloc_gib'), '.2f')} | {f(r.get('peak_reserved_gib'), '.2f')} | "
                f"{f(r.get('hours_for_200k'), '.2f')} | {r.get('unet_passes', '')} | "
                + (
                    f"{r['vs_eager_max_levels']:.0f}, {r['vs_eager_pct_over_2_levels']:.3f} |"
                    if "vs_eager_max_levels" in r
                    else " |"
                )
            )
        return "\n".join(rows)

    def markdown(self) -> str:
        env = self.environment()
        t = self.targets()
        lines = [
            f"### bench_gpu.py ({env['mode']}), {env['date']}, {env['device']}",
            "",
            f"torch {env['torch']}, diffusers {env['diffusers']}, Python {env['python']}; command: `{env['command']}`; "
            f"MFU against {PEAK_TFLOPS:.0f} TFLOP/s (measured dense bf16; 989 nominal).",
            "",
            self.table(),
            "",
            "Targets:",
            "",
        ] + [
            f"- {k}: {v['verdict']}"
            + (f" ({v['best']['case']}: {v['best']['img_s']:.1f} img/s)" if "best" in v else "")
            for k, v in t["verdicts"].items()
        ]
        lines += [
            f"- {r['case']}: {r['s_per_region']:.1f} s per region ({r['windows']} windows, {r['unet_passes']} UNet "
            "passes each)"
            for r in self.results
            if r["group"] == "region" and r["status"] == "ok"
        ]
        for r in self.results:
            if r["group"] == "profile" and r["status"] == "ok":
                lines += [
                    "",
                    f"Profile of one guided DDIM step ({r['preset']}, batch {r['batch']}): {r['step_ms']:.1f} ms of "
                    "kernels; by kind: "
                    + ", ".join(f"{k} {v}%" for k, v in sorted(r["by_kind_pct"].items(), key=lambda kv: -kv[1])),
                    "",
                    "| kernel | ms | % |",
                    "|---|---|---|",
                ] + [f"| `{k['name'][:90]}` | {k['ms']:.2f} | {k['pct']} |" for k in r["top"]]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        from histoldm.fileio import atomic_write_json, atomic_write_text

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.out / "bench_gpu.json",
            {"environment": self.environment(), "results": self.results, "summary": self.targets()},
        )
        atomic_write_text(self.out / "bench_gpu.md", self.markdown())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="the subset that fits ~6 minutes on one H100, compilation included"
    )
    mode.add_argument("--tiny", action="store_true", help="tiny preset on CPU, few steps (tests)")
    ap.add_argument("--cases", default=None, help="comma-separated substrings: run only cases whose name contains one")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else ./bench-gpu-out)")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--sample-batch", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="start no case expected to end past this many seconds")
    args = ap.parse_args(argv)
    profile = make_profile(args)
    if profile.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; use --tiny on CPU", file=sys.stderr)
        return 2
    if profile.device == "cpu":
        torch.set_num_threads(1)  # tiny ops: threads only spin-wait on a shared CPU (5 s instead of 0.05 s per step)
    out = args.out or Path(os.environ.get("OUT") or "bench-gpu-out")
    selected = [s.strip() for s in args.cases.split(",") if s.strip()] if args.cases else None
    shm = Path("/dev/shm")  # each training case writes a 4.8 GB checkpoint and a 1.6 GB bundle: RAM is faster than disk
    roomy = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 16 * 2**30
    tmp_root = shm if profile.device == "cuda" and roomy else None
    print(
        f"torch {torch.__version__}, device {torch.cuda.get_device_name() if profile.device == 'cuda' else 'cpu'}, "
        f"mode {profile.mode}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=tmp_root) as work:
        bench = Bench(profile, out, Path(work), selected)
        for case in bench.cases():
            if bench.wanted(case):
                bench.run_case(case)
        bench.write()
    print("\n" + bench.markdown(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Samplers as pure functions over an eps-predicting denoiser `eps_fn(x, t) -> eps`.

They know nothing about UNets, text or guidance (those are closures in `guidance`), so they can be
checked against diffusers' schedulers and against an analytic denoiser. Latents stay float32 here
whatever the UNet's dtype: the update arithmetic is cheap and bf16 would accumulate rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from histoldm.models.schedule import SCHEDULE, ddim_scheduler, dpm_solver_scheduler
from histoldm.sampling.guidance import unet_passes

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_timesteps(steps: int) -> torch.Tensor:
    """PathLDM's DDIM timesteps, descending (leading spacing, offset 1: 981, 961, ..., 1 for 50)."""
    return _ddim_timesteps(steps).clone()


def training_alphas_cumprod() -> torch.Tensor:
    """alpha-bar for the 1000 training steps of PathLDM's schedule (float32)."""
    return _training_alphas_cumprod().clone()


@functools.cache
def _ddim_timesteps(steps: int) -> torch.Tensor:
    """Built once per step count: the sampler asks for it every batch, 200k images a run."""
    scheduler = ddim_scheduler()
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


@functools.cache
def _training_alphas_cumprod() -> torch.Tensor:
    return ddim_scheduler().alphas_cumprod.to(torch.float32)


def solver_timesteps(solver: str, steps: int) -> list[int]:
    """The training timesteps at which `solver` calls the denoiser, in order (one call each)."""
    if solver == "ddim":
        return [int(t) for t in _ddim_timesteps(steps)]
    scheduler = _multistep_scheduler(solver)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def passes_per_image(solver: str, steps: int, guidance_interval: tuple[int, int] | None) -> int:
    """UNet evaluations per image of a sampler setting: one per step of a distilled student (`lcm`: guidance is
    baked in), else 1 or 2 per solver step (unet_passes)."""
    if solver == "lcm":
        return steps
    return unet_passes(solver_timesteps(solver, steps), guidance_interval)


def _multistep_scheduler(solver: str):
    """A fresh diffusers scheduler for dpmpp / unipc (they keep earlier model outputs as state)."""
    if solver == "dpmpp":
        from diffusers import DPMSolverMultistepScheduler

        # Steps uniform in log-SNR (the paper's choice): with PathLDM's small final noise the leading
        # spacing's last jump (t=48 -> 0 at 20 steps) returns the posterior mean and halves the
        # variance of a Gaussian test distribution; log-SNR spacing ends at t=1 and gets it right.
        return DPMSolverMultistepScheduler.from_config(dpm_solver_scheduler("epsilon").config, use_lu_lambdas=True)
    if solver == "unipc":
        from diffusers import UniPCMultistepScheduler

        # Karras sigma spacing: with linspace/leading spacing UniPC's last jump to sigma 0 leaves a
        # Gaussian test distribution with half its variance at 20 steps; Karras spacing ends at t=0
        # in small steps and gets it within 4% (tests/test_sample.py).
        return UniPCMultistepScheduler(**SCHEDULE, prediction_type="epsilon", use_karras_sigmas=True)
    raise ValueError(f"no multistep scheduler for solver {solver!r}")


def _per_image_noise(like: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Noise drawn image by image on the CPU, so it does not depend on batch size or device."""
    noise = [torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(noise).to(like.device)


@torch.no_grad()
def sample_ddim(
    eps_fn: EpsFn,
    x: torch.Tensor,
    timesteps: Sequence[int] | torch.Tensor,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) from noise `x` at timesteps[0] down to x0.

    The step after the last timestep uses alpha-bar of training step 0 (CompVis and diffusers
    `set_alpha_to_one=False`), which is what PathLDM sampled with. eta > 0 adds fresh noise per step
    and then needs one generator per image.
    """
    if eta > 0 and (generators is None or len(generators) != x.shape[0]):
        raise ValueError("sample_ddim: eta > 0 needs one generator per image")
    a_all = alphas_cumprod.to(device=x.device, dtype=torch.float32)
    ts = [int(t) for t in timesteps]
    x = x.to(torch.float32)
    for i, t in enumerate(ts):
        a_t = a_all[t]
        a_prev = a_all[ts[i + 1]] if i + 1 < len(ts) else a_all[0]
        eps = eps_fn(x, t).to(torch.float32)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        if eta > 0:
            x = x + sigma * _per_image_noise(x, generators)
    return x


@torch.no_grad()
def sample_dpmpp_2m(eps_fn: EpsFn, x: torch.Tensor, steps: int) -> torch.Tensor:
    """DPM-Solver++ (2M, Lu et al. 2022) on PathLDM's schedule: about 20 steps instead of DDIM's 50,
    through diffusers' DPMSolverMultistepScheduler set to epsilon (`eps_fn` already returns eps)."""
    return _sample_multistep(eps_fn, x, steps, _multistep_scheduler("dpmpp"))


@torch.no_grad()
def sample_unipc(eps_fn: EpsFn, x: torch.Tensor, steps: int) -> torch.Tensor:
    """UniPC (bh2, order 2, Zhao et al. 2023) on PathLDM's schedule, through diffusers' scheduler."""
    return _sample_multistep(eps_fn, x, steps, _multistep_scheduler("unipc"))


def _sample_multistep(eps_fn: EpsFn, x: torch.Tensor, steps: int, scheduler) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=x.device)
    x = x.to(torch.float32)
    for t in scheduler.timesteps:
        eps = eps_fn(x, int(t)).to(torch.float32)
        x = scheduler.step(eps, t, x).prev_sample
    return x


class Solver(Protocol):
    """Every solver's one signature: noise `x` -> x0 in `steps` denoiser calls, over `eps_fn(x, t) -> eps`.
    `generators` (one CPU generator per image) feed the solvers that add fresh noise; the others ignore them.
    What differs between solvers (the schedule, DDIM's eta, a student's grid) is bound when it is made."""

    def __call__(
        self, eps_fn: EpsFn, x: torch.Tensor, steps: int, *, generators: Sequence[torch.Generator]
    ) -> torch.Tensor: ...


def ddim_solver(eta: float = 0.0) -> Solver:
    """DDIM on PathLDM's timesteps and training schedule; eta > 0 adds fresh noise per step from `generators`."""

    def solve(eps_fn: EpsFn, x: torch.Tensor, steps: int, *, generators: Sequence[torch.Generator]) -> torch.Tensor:
        noise = generators if eta > 0 else None
        return sample_ddim(eps_fn, x, ddim_timesteps(steps), training_alphas_cumprod(), eta=eta, generators=noise)

    return solve


def multistep_solver(name: str) -> Solver:
    """DPM-Solver++ 2M (`dpmpp`) or UniPC (`unipc`): deterministic, a fresh diffusers scheduler per call."""
    sample = {"dpmpp": sample_dpmpp_2m, "unipc": sample_unipc}[name]

    def solve(eps_fn: EpsFn, x: torch.Tensor, steps: int, *, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return sample(eps_fn, x, steps)

    return solve


def make_solver(name: str, *, eta: float = 0.0, solver_steps: int | None = None) -> Solver:
    """The solver named as in `histoldm sample --solver` with its settings bound: ddim (`eta`), dpmpp,
    unipc, or lcm (consistency steps of a student distilled on a grid of `solver_steps`)."""
    if name == "ddim":
        return ddim_solver(eta)
    if name in ("dpmpp", "unipc"):
        return multistep_solver(name)
    if name == "lcm" and solver_steps is not None:
        # Local: sampling.consistency imports this module (EpsFn, Solver) at its top.
        from histoldm.sampling.consistency import consistency_solver

        return consistency_solver(solver_steps)
    raise ValueError(f"unknown solver {name!r}" + (" (lcm needs the student's solver_steps)" if name == "lcm" else ""))


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image for the noise a solver adds after the first draw: seeded by seed + 1, so
    it never repeats the image's initial noise."""
    return [torch.Generator().manual_seed(s + 1) for s in seeds]

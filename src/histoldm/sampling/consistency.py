"""Few-step sampling of a distilled student (`--preset turbo`): one UNet pass per step, no unconditional pass.

Multistep consistency sampling (Luo et al. 2023) through diffusers' LCMScheduler: at each step the student's
denoised latent, re-noised to the next timestep with fresh noise drawn image by image, so an image depends
only on its own seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from histoldm.models.student import guidance_embedding, lcm_scheduler
from histoldm.sampling.guidance import ContextEpsFn, eps_from_v
from histoldm.sampling.solvers import EpsFn, Solver


def student_eps_fn(
    unet, prediction_type: str, alphas_cumprod: torch.Tensor, guidance: float, embedding_dim: int
) -> ContextEpsFn:
    """(x, t, context) -> eps in float32 from a student UNet that takes the guidance scale as an input."""
    dtype = next(unet.parameters()).dtype
    a_all = alphas_cumprod.to(torch.float32)

    def eps_fn(x: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        w = guidance_embedding(torch.full((x.shape[0],), guidance, device=x.device), embedding_dim).to(dtype)
        out = unet(x.to(dtype), t_batch, encoder_hidden_states=context.to(dtype), timestep_cond=w, return_dict=False)[
            0
        ].to(torch.float32)
        if prediction_type == "v_prediction":
            return eps_from_v(out, x.to(torch.float32), a_all[t].to(x.device))
        return out

    return eps_fn


def consistency_timesteps(steps: int, solver_steps: int) -> list[int]:
    """The training timesteps a `steps`-step consistency sampler visits (999, 759, 499, 259 for 4 of 50)."""
    scheduler = lcm_scheduler(solver_steps)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


@torch.no_grad()
def sample_consistency(
    eps_fn: EpsFn, x: torch.Tensor, steps: int, solver_steps: int, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Consistency sampling in `steps` student passes from noise `x`; one CPU generator per image."""
    if len(generators) != x.shape[0]:
        raise ValueError("sample_consistency: needs one generator per image")
    scheduler = lcm_scheduler(solver_steps)
    scheduler.set_timesteps(steps, device=x.device)
    x = x.to(torch.float32)
    for t in scheduler.timesteps:
        eps = eps_fn(x, int(t)).to(torch.float32)
        x = scheduler.step(eps, t, x, generator=list(generators)).prev_sample
    return x


def consistency_solver(solver_steps: int) -> Solver:
    """Consistency sampling of a student distilled on a grid of `solver_steps`, in the solvers' one signature."""

    def solve(eps_fn: EpsFn, x: torch.Tensor, steps: int, *, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return sample_consistency(eps_fn, x, steps, solver_steps, generators)

    return solve

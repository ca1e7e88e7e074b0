"""The few-step student of latent consistency distillation (Luo et al. 2023, "LCM"): the teacher's UNet
plus a guidance-scale input, and the consistency parameterisation both `distill` and `sample` use.

The guidance scale reaches the UNet through diffusers' `time_cond_proj_dim`: a sinusoidal embedding of
the scale, projected by a bias-free linear layer and added to the timestep embedding. That layer starts
at zero, so an untrained student is exactly its teacher's conditional prediction.
"""

from __future__ import annotations

import math

import torch

from histoldm.models.schedule import SCHEDULE

GUIDANCE_EMBEDDING_DIM = 256  # LCM's w-embedding width for Stable Diffusion
TIMESTEP_SCALING = 10.0  # LCM's boundary-condition scaling (diffusers LCMScheduler default)


def guidance_embedding(scale: torch.Tensor, dim: int = GUIDANCE_EMBEDDING_DIM) -> torch.Tensor:
    """(B,) guidance scales -> (B, dim) float32 sinusoidal features of 1000 * scale (LCM's w-embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=scale.device) / (half - 1))
    args = (scale.to(torch.float32) * 1000.0)[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def make_student(teacher, embedding_dim: int = GUIDANCE_EMBEDDING_DIM):
    """A new UNet with the teacher's architecture and weights plus a zero guidance projection."""
    from diffusers import UNet2DConditionModel

    # without diffusers' private keys: `_use_default_values` (a UNet built in code) would reset time_cond_proj_dim
    config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    student = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": embedding_dim})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise ValueError(f"student does not fit its teacher: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def lcm_scheduler(solver_steps: int):
    """diffusers' LCMScheduler on PathLDM's schedule, its timestep grid the distillation's (t = 20k - 1 at 50)."""
    from diffusers import LCMScheduler

    return LCMScheduler(
        **SCHEDULE, prediction_type="epsilon", original_inference_steps=solver_steps, timestep_scaling=TIMESTEP_SCALING
    )


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at training timesteps t, as LCMScheduler computes them: f(x, 0) = x exactly."""
    scaled = t.to(torch.float32) * TIMESTEP_SCALING
    c_skip = 0.25 / (scaled**2 + 0.25)
    c_out = scaled / (scaled**2 + 0.25).sqrt()
    return c_skip, c_out

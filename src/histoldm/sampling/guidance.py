"""The denoiser closures the solvers call: parameterisation (eps / v) and classifier-free guidance.

Kept out of the UNet and the solver loop so each is one small, testable function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ContextEpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def eps_from_v(v: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(a) eps - sqrt(1-a) x0 and x = sqrt(a) x0 + sqrt(1-a) eps  =>  eps = sqrt(a) v + sqrt(1-a) x."""
    return alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * x


def unet_eps_fn(unet, prediction_type: str, alphas_cumprod: torch.Tensor) -> ContextEpsFn:
    """(x, t, context) -> eps in float32, whatever the UNet predicts and whatever its dtype."""
    dtype = next(unet.parameters()).dtype
    a_all = alphas_cumprod.to(torch.float32)

    def eps_fn(x: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = unet(x.to(dtype), t_batch, encoder_hidden_states=context.to(dtype), return_dict=False)[0].to(
            torch.float32
        )
        if prediction_type == "v_prediction":
            return eps_from_v(out, x.to(torch.float32), a_all[t].to(x.device))
        return out

    return eps_fn


def classifier_free_guidance(
    eps_fn: ContextEpsFn,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    interval: tuple[int, int] | None = None,
):
    """(x, t) -> e_u + scale * (e_c - e_u), both predictions from one batched UNet call.

    `uncond` is the empty caption's context (1, L, D), shared by every image; scale 1.0 is the
    conditional prediction alone (still computed batched, so 1.0 costs what any other scale does).
    `interval` (t_lo, t_hi), inclusive training timesteps: guidance only there (Kynkaanniemi et al.
    2024, "guidance in a limited interval"); at every other t the conditional prediction alone, from a
    UNet call on half the batch. The choice depends on t only, so an image never depends on its batch.
    """
    context = torch.cat([uncond.expand(cond.shape[0], -1, -1).to(cond.dtype), cond])

    def guided(x: torch.Tensor, t: int) -> torch.Tensor:
        if interval is not None and not interval[0] <= t <= interval[1]:
            return eps_fn(x, t, cond)
        e_u, e_c = eps_fn(torch.cat([x, x]), t, context).chunk(2)
        return e_u + scale * (e_c - e_u)

    return guided


def unet_passes(timesteps: list[int], interval: tuple[int, int] | None) -> int:
    """UNet evaluations per image for guided sampling at these timesteps: 2 where guidance applies, else 1."""
    return sum(1 if interval is not None and not interval[0] <= t <= interval[1] else 2 for t in timesteps)

"""The latent consistency distillation objective (Luo et al. 2023, LCM): one guided DDIM step of the
teacher, a consistency target from the EMA student, the online student pulled towards it.

    t ~ the teacher's DDIM grid (19, 39, ..., 999 for 50 steps), s = t - 1000/N (0 at the end)
    x_t = noised latent; w ~ U[guidance_range]
    teacher: eps_w = e_u + w (e_c - e_u) at (x_t, t); x_s = DDIM(x_t, t -> s, eps_w)
    f(x, t, w) = c_skip(t) x + c_out(t) x0(x, eps_student(x, t, w))     (f(x, 0) = x)
    loss = || f_student(x_t, t, w) - stopgrad f_target(x_s, s, w) ||

Kept out of the loop (as train's DiffusionObjective is) so the loop reads data -> loss -> step.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from histoldm.models.schedule import ddpm_scheduler
from histoldm.models.student import boundary_scalings, guidance_embedding


def _x0(x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


class ConsistencyDistillation:
    def __init__(
        self,
        prediction_type: Literal["epsilon", "v_prediction"],
        solver_steps: int,
        guidance_range: tuple[float, float],
        embedding_dim: int,
        loss: Literal["l2", "huber"],
        device: torch.device,
    ):
        scheduler = ddpm_scheduler(prediction_type)
        n_train = int(scheduler.config.num_train_timesteps)
        self.prediction_type = prediction_type
        self.skip = n_train // solver_steps
        self.grid = torch.arange(1, solver_steps + 1, device=device) * self.skip - 1
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.guidance_range = guidance_range
        self.embedding_dim = embedding_dim
        self.loss_kind = loss

    def _eps(self, out: torch.Tensor, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The UNet's output as eps (float32), whatever it predicts."""
        out = out.float()
        return a.sqrt() * out + (1 - a).sqrt() * x if self.prediction_type == "v_prediction" else out

    def _consistency(
        self, unet, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, w_emb: torch.Tensor
    ) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = self._eps(unet(x, t, encoder_hidden_states=context, timestep_cond=w_emb, return_dict=False)[0], x, a)
        c_skip, c_out = (c.view(-1, 1, 1, 1) for c in boundary_scalings(t))
        return c_skip * x + c_out * _x0(x, eps, a)

    def loss(
        self,
        student,
        target,
        teacher,
        latents: torch.Tensor,
        context: torch.Tensor,
        uncond: torch.Tensor,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """Mean loss over the batch (a 0-d fp32 tensor; no host sync). `uncond`: (1, L, D) empty caption."""
        b = latents.shape[0]
        t = self.grid[torch.randint(0, len(self.grid), (b,), generator=gen, device=latents.device)]
        s = (t - self.skip).clamp(min=0)
        noise = torch.randn(latents.shape, generator=gen, device=latents.device, dtype=torch.float32)
        lo, hi = self.guidance_range
        w = lo + (hi - lo) * torch.rand(b, generator=gen, device=latents.device)
        w_emb = guidance_embedding(w, self.embedding_dim)
        a_t = self.alphas_cumprod[t].view(b, 1, 1, 1)
        x_t = a_t.sqrt() * latents.float() + (1 - a_t).sqrt() * noise

        pred = self._consistency(student, x_t, t, context, w_emb)
        with torch.no_grad():
            both = torch.cat([uncond.expand(b, -1, -1).to(context.dtype), context])
            out = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=both, return_dict=False)[0]
            e_u, e_c = self._eps(out, torch.cat([x_t, x_t]), torch.cat([a_t, a_t])).chunk(2)
            eps_w = e_u + w.view(b, 1, 1, 1) * (e_c - e_u)
            a_s = self.alphas_cumprod[s].view(b, 1, 1, 1)
            x_s = a_s.sqrt() * _x0(x_t, eps_w, a_t) + (1 - a_s).sqrt() * eps_w
            goal = self._consistency(target, x_s, s, context, w_emb)
        if self.loss_kind == "huber":  # LCM's pseudo-Huber, c = 0.001
            per_sample = (((pred - goal) ** 2 + 1e-6).sqrt() - 1e-3).mean(dim=(1, 2, 3))
        else:
            per_sample = F.mse_loss(pred, goal, reduction="none").mean(dim=(1, 2, 3))
        return per_sample.mean()

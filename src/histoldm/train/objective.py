"""The diffusion training objective: noising, the eps / v target, optional min-SNR weighting.

Kept out of the training loop so the loop reads as data -> loss -> step, and so sampling code and
tests can check the parameterisation on its own. The schedule is PathLDM's (histoldm.models.schedule).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from histoldm.models.schedule import ddpm_scheduler


class DiffusionObjective:
    def __init__(
        self, prediction_type: Literal["epsilon", "v_prediction"], min_snr_gamma: float | None, device: torch.device
    ):
        scheduler = ddpm_scheduler(prediction_type)
        self.prediction_type = prediction_type
        self.min_snr_gamma = min_snr_gamma
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    def loss(self, unet, latents: torch.Tensor, context: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Mean loss over the batch (a 0-d fp32 tensor; no host sync)."""
        b = latents.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), generator=gen, device=latents.device)
        noise = torch.randn(latents.shape, generator=gen, device=latents.device, dtype=latents.dtype)
        a = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = noise if self.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
        pred = unet(noisy, t, encoder_hidden_states=context, return_dict=False)[0]
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * self.weights(t)).mean()

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023) expressed for the chosen target; 1 when off."""
        if self.min_snr_gamma is None:
            return torch.ones_like(t, dtype=torch.float32)
        a = self.alphas_cumprod[t]
        snr = a / (1 - a)
        clipped = snr.clamp(max=self.min_snr_gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)

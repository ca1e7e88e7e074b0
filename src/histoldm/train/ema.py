"""Exponential moving average of the UNet weights (fp32, on the training device).

Small and ours rather than diffusers' EMAModel so that its state is three tensors-only files in
the checkpoint. Decay warms up as min(decay, (1 + n) / (10 + n)): early averages are not dominated
by the random initialisation.
"""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = [p.detach().float() for p in model.parameters() if p.requires_grad]
        torch._foreach_lerp_(self.shadow, params, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: s.detach().cpu().contiguous() for n, s in zip(self.names, self.shadow)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for n, s in zip(self.names, self.shadow):
            s.copy_(tensors[n])
        self.updates = updates

    def averaged_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's full state dict (buffers included) with averaged parameters, on CPU."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state.update(self.state_dict())
        return state

"""Validation image grid during training: fixed captions, fixed seeds, DDIM with guidance, decoded.

Off by default (it is the one place training touches an autoencoder). When on, it runs on the main
process only, every `every` steps, from the live (not EMA) weights, and writes
RUN/validation/step-XXXXXXXX.png plus a TensorBoard image. The same captions and noise at every
step make the grids comparable across the run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from histoldm.errors import UserError
from histoldm.fileio import atomic_write_bytes
from histoldm.models.autoencoder import decode, load_autoencoder
from histoldm.sampling.guidance import classifier_free_guidance, unet_eps_fn
from histoldm.sampling.run import png_bytes, to_uint8
from histoldm.sampling.solvers import make_solver, training_alphas_cumprod
from histoldm.train.config import ValidationSection


class ValidationGrid:
    def __init__(
        self, cfg: ValidationSection, text, latent_meta: dict, prediction_type: str, device: torch.device, seed: int
    ):
        if not cfg.autoencoder:
            raise UserError("validation.autoencoder: required when validation.every > 0")
        self.ae = load_autoencoder(cfg.autoencoder, device)
        if self.ae.fingerprint != latent_meta.get("fingerprint"):
            raise UserError(
                f"validation.autoencoder: {cfg.autoencoder} is not the autoencoder the latent cache was made with"
            )
        captions = cfg.captions or text.cache.captions[: cfg.n]
        missing = [c for c in captions if text.row_of(c) is None]
        if missing:
            raise UserError(f"validation.captions: not in the text cache: {missing[0][:80]!r}")
        rows = torch.tensor([text.row_of(c) for c in captions])
        self.cond = text.embeddings[rows].float().to(device)
        self.uncond = text.uncond.float().to(device)
        shape = (int(latent_meta["channels"]), int(latent_meta["size"]), int(latent_meta["size"]))
        self.noise = torch.randn((len(captions), *shape), generator=torch.Generator().manual_seed(seed)).to(device)
        self.scale_factor = float(latent_meta.get("scaling_factor", 1.0))
        self.cfg, self.prediction_type, self.device = cfg, prediction_type, device

    @torch.no_grad()
    def render(self, unet, step: int, run_dir: Path, writer, autocast_dtype: torch.dtype | None) -> Path:
        was_training = unet.training
        unet.eval()
        alphas = training_alphas_cumprod()
        with torch.autocast(
            self.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            guided = classifier_free_guidance(
                unet_eps_fn(unet, self.prediction_type, alphas), self.cond, self.uncond, self.cfg.guidance_scale
            )
            latents = make_solver("ddim")(guided, self.noise.clone(), self.cfg.steps, generators=[])
            images = decode(self.ae, latents / self.scale_factor).float().clamp(-1, 1)
        unet.train(was_training)
        grid = torch.cat(list(images), dim=-1)  # one row: (3, H, n * W)
        path = run_dir / "validation" / f"step-{step:08d}.png"
        atomic_write_bytes(path, png_bytes(grid))
        if writer is not None:
            writer.add_image("validation/grid", to_uint8(grid), step)
        return path

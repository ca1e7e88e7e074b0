"""The first stage: a diffusers VQModel or AutoencoderKL behind one encode/decode interface.

A spec is a preset name (`vq-f4`, `kl-f4`, `kl-f4-tiny`, `kl-f4-lite`: random weights, seeded, for tests and
training from scratch), a local folder written by `save_pretrained`, or a hub id. The class is
read from the folder's `config.json` (`_class_name`), never guessed.

Encoding conventions (what the diffusion model sees, before the cache's scaling factor):
- VQ: the pre-quantisation latent (PathLDM); `decode` quantises first. Which code a latent vector
  gets is an argmin over distances, and near-ties (about 1 in 10^5 vectors) fall to whichever
  floating-point expression computes them: `quantize="diffusers"` (default) uses diffusers'
  `cdist`, `quantize="taming"` CompVis/taming's `z^2 + e^2 - 2 z.e`, as PathLDM's decoding did.
- KL: the posterior mean by default (deterministic, so a cache is reproducible); `sample=True`
  draws from the posterior instead. The posterior's std is small next to diffusion noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from histoldm.errors import UserError
from histoldm.models.presets import AUTOENCODER_PRESETS, build_autoencoder

_CLASSES = {"VQModel": "vq", "AutoencoderKL": "kl"}
QuantizeRule = Literal["diffusers", "taming"]


@dataclass
class Autoencoder:
    model: Any  # diffusers VQModel | AutoencoderKL
    kind: Literal["vq", "kl"]
    name: str  # the spec it was loaded from
    fingerprint: str  # sha256 of the weights: latent caches and bundles are checked against it

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\t{tuple(t.shape)}\t{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _class_name(spec: str) -> str:
    folder = Path(spec).expanduser()
    if spec.startswith(("/", ".", "~")) and not folder.is_dir():
        raise UserError(f"{spec}: autoencoder folder not found")
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise UserError(f"{folder}: not a diffusers autoencoder folder (config.json missing)")
        text = config.read_text(encoding="utf-8")
    else:
        try:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(spec, "config.json")).read_text(encoding="utf-8")
        except Exception as e:  # network, unknown repo, offline mode: all one user-facing problem
            raise UserError(
                f"{spec}: not a preset, a local folder, or a reachable hub id ({type(e).__name__})"
            ) from None
    name = json.loads(text).get("_class_name", "")
    if name not in _CLASSES:
        raise UserError(f"{spec}: config.json names class '{name}', expected VQModel or AutoencoderKL")
    return name


def load_autoencoder(spec: str, device: str | torch.device = "cpu") -> Autoencoder:
    """Load (or, for a preset, build with seed 0) an autoencoder in eval mode, fp32, on `device`."""
    if spec in AUTOENCODER_PRESETS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_autoencoder(spec)
        kind = AUTOENCODER_PRESETS[spec]["kind"]
    else:
        from diffusers import AutoencoderKL, VQModel

        name = _class_name(spec)
        cls = VQModel if name == "VQModel" else AutoencoderKL
        model = cls.from_pretrained(spec)
        kind = _CLASSES[name]
    model.requires_grad_(False).eval()
    fingerprint = weights_fingerprint(model)
    return Autoencoder(model=model.to(device), kind=kind, name=spec, fingerprint=fingerprint)


def encode(
    ae: Autoencoder, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] -> unscaled latents (B, C, H/f, W/f)."""
    if ae.kind == "vq":
        return ae.model.encode(images).latents
    dist = ae.model.encode(images).latent_dist
    return dist.sample(generator) if sample else dist.mean


def taming_quantize(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """taming's VectorQuantizer2 (PathLDM's first stage) in inference: the code at the argmin of
    z^2 + e^2 - 2 z.e, computed in that order, returned as z + (e - z) like its straight-through output."""
    z = latents.permute(0, 2, 3, 1).contiguous()
    flat = z.view(-1, codebook.shape[1])
    d = (
        torch.sum(flat**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", flat, codebook.t())
    )
    z_q = codebook[torch.argmin(d, dim=1)].view(z.shape)
    return (z + (z_q - z)).permute(0, 3, 1, 2).contiguous()


def decode(ae: Autoencoder, latents: torch.Tensor, *, quantize: QuantizeRule = "diffusers") -> torch.Tensor:
    """unscaled latents -> images in about [-1, 1] (VQ: quantised first, as in PathLDM, by `quantize`'s rule)."""
    if ae.kind == "vq":
        if quantize == "taming":
            quantized = taming_quantize(latents, ae.model.quantize.embedding.weight)
            return ae.model.decode(quantized, force_not_quantize=True).sample
        return ae.model.decode(latents, force_not_quantize=False).sample
    return ae.model.decode(latents).sample

"""The model bundle: the folder a trained (or converted) model lives in, read by `sample`.

    BUNDLE/
      histoldm_model.json   BundleMeta: UNet preset, parameterisation, text and latent contracts
      unet/                 diffusers UNet2DConditionModel.save_pretrained (safetensors)
      autoencoder/          optional: diffusers VQModel / AutoencoderKL (else meta.latent.autoencoder names one)
      text_encoder/         optional: a saved text model (conversion from PathLDM writes one)

A student made by `histoldm distill` records in `distilled` how it samples (few steps, guidance baked in).

The text and latent sections carry fingerprints so that sampling with another text encoder, or
decoding with another autoencoder, is an error instead of silent garbage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from histoldm.config import StrictModel
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_text, follow_umask

META_FILE = "histoldm_model.json"
FORMAT = "histoldm-model/1"


class TextContract(StrictModel):
    encoder: str  # hub id, local folder, or a bundled name ("minilm", "tiny-clip")
    mode: str  # pathldm | truncate | chunks | interpolate
    max_length: int
    dim: int
    fingerprint: str = ""  # hash of the encoder's weights + mode + length (text cache meta has the same)


class LatentContract(StrictModel):
    channels: int
    size: int
    scaling_factor: float = 1.0
    autoencoder: str = ""  # folder or hub id of the autoencoder when not stored inside the bundle
    kind: Literal["vq", "kl"] = "kl"
    fingerprint: str = ""  # latent cache meta has the same


class DistilledSampling(StrictModel):
    """How a distilled student samples: consistency steps on the teacher's DDIM grid, guidance as an input."""

    method: Literal["lcm"] = "lcm"
    solver_steps: int  # the teacher's DDIM grid the student was distilled on (LCMScheduler original_inference_steps)
    guidance_range: tuple[float, float]  # guidance scales the student saw; sampling outside it is refused
    embedding_dim: int  # width of the guidance-scale embedding (UNet time_cond_proj_dim)
    teacher: str = ""  # the teacher bundle and its trained steps


class BundleMeta(StrictModel):
    format: str = FORMAT
    unet_preset: str
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    text: TextContract
    latent: LatentContract
    trained_steps: int = 0
    source: str = ""  # the run or checkpoint this bundle came from
    distilled: DistilledSampling | None = None  # set on a few-step student; None on a teacher


def save_bundle(folder: Path, meta: BundleMeta, unet, autoencoder=None) -> Path:
    """Write unet (+ autoencoder) with safetensors and the meta file last, so a bundle with a
    meta file is always complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)  # re-export: torn weights must not pass for a bundle
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    if autoencoder is not None:
        autoencoder.save_pretrained(folder / "autoencoder", safe_serialization=True)
    follow_umask(folder)
    atomic_write_text(folder / META_FILE, meta.model_dump_json(indent=2) + "\n")
    return folder


def read_bundle_meta(folder: Path) -> BundleMeta:
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise UserError(f"{folder}: not a histoldm model bundle ({META_FILE} missing)")
    try:
        return BundleMeta.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as e:
        raise UserError(f"{path}: invalid bundle metadata ({str(e).splitlines()[0]})") from None


def load_bundle_unet(folder: Path):
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    read_bundle_meta(folder)
    if not (folder / "unet" / "config.json").is_file():
        raise UserError(f"{folder}: bundle has no unet/ folder")
    return UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True)

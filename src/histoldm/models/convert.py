"""Convert a CompVis/Lightning latent-diffusion checkpoint (PathLDM's release) into a model bundle.

PathLDM loads its checkpoints with `strict=False`, so a prefix mismatch silently loads nothing.
Here every tensor of the checkpoint is accounted for: it is mapped onto our UNet, VQ autoencoder
or CLIP text model, or skipped by a named rule (schedule buffers, EMA copies, training losses, the FID network that
PathLDM's `LatentDiffusion` registers as `inception` when track_fid=True, its default), and
anything else - a missing, unexpected or wrongly shaped tensor - stops the conversion with the
keys named. `to_compvis` is the inverse mapping; a round trip reproduces every tensor bit for bit.

Assumed checkpoint layout (CompVis `LatentDiffusion`):
  model.diffusion_model.*          openaimodel.UNetModel
  first_stage_model.*              VQModelInterface (encoder, decoder, quant_conv, quantize, post_quant_conv)
  cond_stage_model.transformer.*   a transformers CLIPTextModel inside a FrozenCLIPEmbedder-style wrapper
"""

from __future__ import annotations

import json
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from histoldm.errors import UserError
from histoldm.fileio import atomic_write_json, require_file
from histoldm.manifest import write_manifest
from histoldm.models import compvis_keys as ck
from histoldm.models.autoencoder import weights_fingerprint
from histoldm.models.bundle import META_FILE, BundleMeta, LatentContract, TextContract, load_bundle_unet, save_bundle
from histoldm.models.config import ConvertConfig
from histoldm.models.presets import AUTOENCODER_PRESETS, build_autoencoder, build_unet
from histoldm.models.schedule import ddpm_scheduler
from histoldm.text.encoders import ClipTextEncoder
from histoldm.text.tokenizer import BOS_ID, EOS_ID

PREFIX = {
    "unet": "model.diffusion_model.",
    "autoencoder": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
_SCHEDULE_BUFFERS = (
    "betas alphas_cumprod alphas_cumprod_prev sqrt_alphas_cumprod sqrt_one_minus_alphas_cumprod "
    "log_one_minus_alphas_cumprod sqrt_recip_alphas_cumprod sqrt_recipm1_alphas_cumprod posterior_variance "
    "posterior_log_variance_clipped posterior_mean_coef1 posterior_mean_coef2 lvlb_weights"
).split()
SKIP_RULES: list[tuple[str, str]] = [
    (
        rf"({'|'.join(_SCHEDULE_BUFFERS)})",
        "diffusion schedule buffer: rebuilt by histoldm.models.schedule (betas checked against it)",
    ),
    (r"logvar", "per-timestep loss weighting, used only in CompVis training"),
    (r"scale_factor", "latent scale factor: recorded as the bundle's latent.scaling_factor"),
    (r"model_ema\.(decay|num_updates)", "EMA bookkeeping"),
    (r"model_ema\..+", "EMA copy of the UNet weights (convert it instead with --ema)"),
    (r"first_stage_model\.loss\..+", "autoencoder training loss (LPIPS / discriminator), not used for sampling"),
    (
        r"first_stage_model\.model_ema\..+",
        "EMA copy of the autoencoder (taming VQModel use_ema), not used for sampling",
    ),
    (
        r"first_stage_model\.(colorize|quantize\.used)",
        "autoencoder bookkeeping buffer (segmentation colouring / codebook remap), unused for RGB",
    ),
    (
        r"inception\..+",
        "FID network (pytorch-fid InceptionV3, registered by PathLDM's LatentDiffusion when track_fid=True)",
    ),
    (
        r"cond_stage_model\.transformer\.text_model\.embeddings\.position_ids",
        "constant position-id buffer, rebuilt by transformers",
    ),
    (
        r"cond_stage_model\.transformer\.(vision_model\..+|visual_projection\.weight|text_projection\.weight|logit_scale)",
        "CLIP image tower / projection heads, unused for text conditioning",
    ),
]
_REPORT_FILE = "conversion_report.json"


@dataclass
class Converted:
    """Our three state dicts plus what was left out of the checkpoint and why."""

    parts: dict[str, dict[str, torch.Tensor]]
    skipped: list[dict[str, str]] = field(default_factory=list)
    scale_factor: float = 1.0


# ---------------------------------------------------------------- reading


def _weights_only_detail(message: str) -> str | None:
    m = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", message)
    return m[1] if m else None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a .ckpt/.pt (Lightning `state_dict` or plain) or .safetensors file."""
    path = require_file(Path(path), "checkpoint")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError and friends: a damaged file is a user problem
            raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if global_name := _weights_only_detail(str(e)):
            raise UserError(
                f"{path}: the checkpoint stores pickled Python objects ({global_name}), which cannot be loaded safely; "
                "re-save its state_dict as a plain file in the environment that wrote it (docs/convert.md shows how)"
            ) from None
        raise UserError(f"{path}: not a readable PyTorch checkpoint (corrupted or another format)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path}: holds no state dict of tensors (expected a Lightning checkpoint or a plain state dict)"
        )
    return state


# ---------------------------------------------------------------- our models and their CompVis names


def _meta_unet(preset: str, context_dim: int, channels: int, sample_size: int):
    with torch.device("meta"):
        return build_unet(preset, context_dim=context_dim, latent_channels=channels, sample_size=sample_size)


def _meta_vq(preset: str):
    if preset in AUTOENCODER_PRESETS and AUTOENCODER_PRESETS[preset]["kind"] != "vq":
        raise UserError(f"autoencoder preset {preset}: PathLDM checkpoints hold a VQ autoencoder, choose a vq-* preset")
    with torch.device("meta"):
        return build_autoencoder(preset)


def compvis_names(unet, vq, text_keys) -> dict[str, dict[str, str]]:
    """Per component: our key -> full CompVis key (with its prefix)."""
    cfg = unet.config
    tables = {
        "unet": ck.unet_names(unet.state_dict().keys(), cfg.layers_per_block, cfg.up_block_types),
        "autoencoder": ck.vq_names(vq.state_dict().keys(), len(vq.config.block_out_channels)),
        "text_encoder": {
            k: k if k.startswith("text_model.") else f"text_model.{k}" for k in text_keys
        },  # transformers 5 dropped the wrapper
    }
    for comp, table in tables.items():
        if len(set(table.values())) != len(table):  # two of our tensors fed from one: a naming-rule bug
            raise ValueError(f"{comp}: CompVis names are not one-to-one for this architecture")
    return {comp: {ours: PREFIX[comp] + theirs for ours, theirs in table.items()} for comp, table in tables.items()}


def _ema_name(compvis_key: str) -> str:
    """CompVis LitEma stores `model.diffusion_model.a.b` as `model_ema.diffusion_modelab`."""
    return "model_ema." + compvis_key.removeprefix("model.").replace(".", "")


def _skip_reason(key: str) -> str | None:
    return next((reason for pattern, reason in SKIP_RULES if re.fullmatch(pattern, key)), None)


def _preview(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def map_from_compvis(
    state: dict[str, torch.Tensor],
    names: dict[str, dict[str, str]],
    shapes: dict[str, dict[str, torch.Size]],
    *,
    source: str,
    ema: bool = False,
) -> Converted:
    """Assign every checkpoint tensor to one of our keys or a skip rule; anything else is an error."""
    parts: dict[str, dict[str, torch.Tensor]] = {comp: {} for comp in names}
    claimed: set[str] = set()
    missing, mismatched = [], []
    for comp, table in names.items():
        for ours, theirs in table.items():
            if ema and comp == "unet":
                theirs = _ema_name(theirs)
            if theirs not in state:
                missing.append(theirs)
                continue
            tensor, want = state[theirs], shapes[comp][ours]
            if ck.is_conv1x1_in_compvis(ours) and tensor.shape == (*want, 1, 1):
                tensor = tensor.reshape(want)
            if tensor.shape != want:
                mismatched.append(f"{theirs} {tuple(state[theirs].shape)} vs {tuple(want)}")
                continue
            parts[comp][ours] = tensor
            claimed.add(theirs)
    skipped, unexpected = [], []
    for key in state:
        if key in claimed:
            continue
        if ema and key.startswith(PREFIX["unet"]):
            reason: str | None = "raw UNet weights (the EMA copy was converted)"
        else:
            reason = _skip_reason(key)
        if reason:
            skipped.append({"key": key, "reason": reason})
        else:
            unexpected.append(key)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (checkpoint vs ours): {_preview(mismatched)}")
    if problems:
        raise UserError(f"{source}: does not match the target models; " + "; ".join(problems))
    scale = state.get("scale_factor")
    return Converted(parts, skipped, float(scale) if scale is not None else 1.0)


def to_compvis(parts: dict[str, dict[str, torch.Tensor]], names: dict[str, dict[str, str]]) -> dict[str, torch.Tensor]:
    """Our state dicts -> one CompVis-named state dict (1x1-conv shapes restored)."""
    out: dict[str, torch.Tensor] = {}
    for comp, table in names.items():
        for ours, theirs in table.items():
            tensor = parts[comp][ours]
            out[theirs] = tensor.reshape(*tensor.shape, 1, 1) if ck.is_conv1x1_in_compvis(ours) else tensor
    return out


# ---------------------------------------------------------------- checks read off the checkpoint


def _require_layout(state: dict[str, torch.Tensor], source: str) -> None:
    if not any(k.startswith(PREFIX["unet"]) for k in state):
        raise UserError(
            f"{source}: no {PREFIX['unet']}* keys, not a CompVis latent-diffusion checkpoint (first keys: "
            f"{_preview(sorted(state))})"
        )
    if not any(k.startswith(PREFIX["text_encoder"]) for k in state):
        other = sorted(k for k in state if k.startswith("cond_stage_model."))
        what = (
            f"its text model is not a transformers CLIP wrapper ({_preview(other)})"
            if other
            else "it has no cond_stage_model (not text-conditioned)"
        )
        raise UserError(f"{source}: {what}; only CLIP text models under {PREFIX['text_encoder']} are supported")


def _check_schedule(state: dict[str, torch.Tensor], source: str) -> None:
    """A UNet trained on another noise schedule would sample garbage with ours: refuse it."""
    if "betas" not in state:
        return

    ours, theirs = ddpm_scheduler().betas.double(), state["betas"].double()
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-4, atol=1e-7):
        raise UserError(
            f"{source}: trained with another noise schedule ({theirs.numel()} steps, betas "
            f"{theirs[0]:.5f}..{theirs[-1]:.5f}); "
            f"histoldm uses PathLDM's ({ours.numel()} steps, {ours[0]:.5f}..{ours[-1]:.5f})"
        )


def _unet_dims(state: dict[str, torch.Tensor], prefix: str, source: str) -> tuple[int, int]:
    """(context_dim, latent channels) read off the cross-attention and the first convolution."""
    try:
        context = next(v.shape[1] for k, v in state.items() if k.startswith(prefix) and k.endswith("attn2.to_k.weight"))
        channels = state[prefix + "input_blocks.0.0.weight"].shape[1]
    except (StopIteration, KeyError):
        raise UserError(
            f"{source}: UNet has no cross-attention or no input_blocks.0.0.weight, not a text-conditioned CompVis UNet"
        ) from None
    return int(context), int(channels)


def text_config_from_checkpoint(state: dict[str, torch.Tensor], config_file: Path | None, source: str):
    """CLIPTextConfig: from a JSON file when given, else from the tensor shapes (64-wide heads, as
    in every OpenAI CLIP text tower; the head count is the one thing the weights cannot say)."""
    from transformers import CLIPTextConfig

    if config_file is not None:
        try:
            data = json.loads(require_file(config_file, "text encoder config").read_text(encoding="utf-8"))
            return CLIPTextConfig(**data.get("text_config", data))  # a full CLIPConfig (hub config.json) nests it
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
            raise UserError(f"{config_file}: not a CLIPTextConfig JSON file ({str(e).splitlines()[0]})") from None
    p = PREFIX["text_encoder"] + "text_model."
    try:
        vocab, width = state[p + "embeddings.token_embedding.weight"].shape
        positions = state[p + "embeddings.position_embedding.weight"].shape[0]
        intermediate = state[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise UserError(
            f"{source}: text model lacks {e.args[0]}; pass --text-encoder-config for a non-standard CLIP"
        ) from None
    layers = 1 + max(int(m[1]) for k in state if (m := re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k)))
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64), max_position_embeddings=positions,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )  # fmt: skip


# ---------------------------------------------------------------- the stage


def _materialize(meta_model, state: dict[str, torch.Tensor]):
    """Give a meta-device model real storage and load `state` strictly (keys were checked already)."""
    model = meta_model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()


def plan_conversion(state: dict[str, torch.Tensor], cfg: ConvertConfig, source: str):
    """Check the layout and schedule, then build the targets: (models, names, shapes) per component.

    All three are built on the meta device: shapes and names without memory or random init.
    """
    from transformers import CLIPTextModel

    _require_layout(state, source)
    _check_schedule(state, source)
    context_dim, channels = _unet_dims(state, PREFIX["unet"], source)
    models = {
        "unet": _meta_unet(cfg.unet_preset, context_dim, channels, cfg.sample_size),
        "autoencoder": _meta_vq(cfg.autoencoder_preset),
    }
    with torch.device("meta"):
        models["text_encoder"] = CLIPTextModel(text_config_from_checkpoint(state, cfg.text_encoder_config, source))
    shapes = {comp: {k: v.shape for k, v in m.state_dict().items()} for comp, m in models.items()}
    names = compvis_names(models["unet"], models["autoencoder"], shapes["text_encoder"].keys())
    return models, names, shapes


def convert_state_dict(state: dict[str, torch.Tensor], cfg: ConvertConfig, source: str):
    """CompVis state dict -> (unet, vq, text model, Converted): real models with every tensor checked."""
    models, names, shapes = plan_conversion(state, cfg, source)
    converted = map_from_compvis(state, names, shapes, source=source, ema=cfg.ema)
    unet = _materialize(models["unet"], converted.parts["unet"])
    vq = _materialize(models["autoencoder"], converted.parts["autoencoder"])
    text = type(models["text_encoder"])(
        models["text_encoder"].config
    )  # real init: its position_ids buffer is not in the state dict
    text.load_state_dict(converted.parts["text_encoder"], strict=True)
    return unet, vq, text.eval(), converted


@dataclass(frozen=True)
class ConvertResult:
    """`histoldm convert-ldm`: the bundle, tensors and parameters per component, and what was left out."""

    bundle: Path
    converted: dict[str, dict[str, int]]  # component -> {tensors, parameters}
    skipped: int  # checkpoint entries not converted (listed with reasons in the report)
    skipped_by_reason: dict[str, int]
    report: Path


def run_convert(cfg: ConvertConfig) -> ConvertResult:
    """Write the bundle: text_encoder/ first, then unet/ + autoencoder/ + meta (meta last = complete)."""
    started = time.time()
    out = Path(cfg.out)
    if (out / META_FILE).exists():
        raise UserError(f"{out}: already holds a model bundle; choose another --out or remove it")
    state = read_checkpoint(cfg.checkpoint)
    unet, vq, text, converted = convert_state_dict(state, cfg, str(cfg.checkpoint))
    text_dir = (out / "text_encoder").resolve()
    text.save_pretrained(text_dir)
    encoder = ClipTextEncoder(str(text_dir), text, cfg.text_mode, cfg.max_length, "cpu", torch.float32)
    meta = BundleMeta(
        unet_preset=cfg.unet_preset,
        prediction_type="epsilon",  # CompVis parameterization "eps", the LatentDiffusion default PathLDM keeps
        text=TextContract(**encoder.contract()),
        latent=LatentContract(
            channels=unet.config.in_channels,
            size=cfg.sample_size,
            scaling_factor=converted.scale_factor,
            autoencoder="",
            kind="vq",
            fingerprint=weights_fingerprint(vq),
        ),  # fmt: skip
        source=f"convert-ldm {Path(cfg.checkpoint).resolve()}" + (" (EMA weights)" if cfg.ema else ""),
    )
    save_bundle(out, meta, unet, autoencoder=vq)
    counts = {
        comp: {"tensors": len(sd), "parameters": sum(t.numel() for t in sd.values())}
        for comp, sd in converted.parts.items()
    }
    reasons: dict[str, int] = {}
    for s in converted.skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    report = {
        "checkpoint": str(cfg.checkpoint),
        "converted": counts,
        "skipped_by_reason": reasons,
        "skipped": converted.skipped,
    }
    atomic_write_json(out / _REPORT_FILE, report)
    write_manifest(
        out / "manifest.json", stage="convert-ldm", config=cfg, inputs={"checkpoint": cfg.checkpoint},
        produced={"bundle": str(out), **{k: v["tensors"] for k, v in counts.items()}}, started=started,
        skipped=converted.skipped,
        extra={"text_fingerprint": meta.text.fingerprint, "latent_fingerprint": meta.latent.fingerprint},
    )  # fmt: skip
    return ConvertResult(out, counts, len(converted.skipped), reasons, out / _REPORT_FILE)


def bundle_to_compvis(folder: Path) -> dict[str, torch.Tensor]:
    """A converted bundle back in CompVis naming (the inverse of `run_convert`, bit for bit)."""
    from diffusers import VQModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    unet = load_bundle_unet(folder)
    for sub in ("autoencoder", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise UserError(f"{folder}: bundle has no {sub}/ folder (not a converted PathLDM bundle)")
    vq = VQModel.from_pretrained(folder / "autoencoder", use_safetensors=True)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    parts = {"unet": unet.state_dict(), "autoencoder": vq.state_dict(), "text_encoder": text.state_dict()}
    return to_compvis(parts, compvis_names(unet, vq, parts["text_encoder"].keys()))

"""Where a training run's UNet starts: CompVis initialisation, or weights from a bundle, run or checkpoint.

PathLDM fine-tunes the ImageNet LDM UNet (`cin256-v2`); its UNetModel loads `unet.ckpt` with
`strict=False`, so a renamed or reshaped tensor silently stays random. Here every UNet tensor of
the source is accounted for: each of ours is filled from it, shapes are checked, and everything
else in the file is skipped under a named reason (the class embedder of a class-conditional LDM,
the first stage, the text model, EMA copies, the FID network...). Anything under the UNet's
prefix that we cannot place is an error.

Sources:
  histoldm model bundle   BUNDLE/unet (from `train` or `convert-ldm`)
  histoldm run folder     RUN/model when finished, else its latest checkpoint's model weights
  CompVis / Lightning     .ckpt/.pt/.safetensors: a LatentDiffusion state dict (`model.diffusion_model.*`)
                          or a bare openaimodel.UNetModel one (`input_blocks.*`, PathLDM's `unet.ckpt`)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from histoldm.errors import UserError
from histoldm.fileio import sha256_file
from histoldm.models import compvis_keys as ck
from histoldm.models.bundle import META_FILE
from histoldm.models.convert import SKIP_RULES, _check_schedule, _preview, read_checkpoint
from histoldm.models.presets import UNET_PRESETS
from histoldm.train.checkpoint import read_latest

UNET_PREFIX = "model.diffusion_model."
# Skip reasons for what a CompVis checkpoint holds besides the UNet (init_from only: convert-ldm keeps more).
_INIT_SKIPS: list[tuple[str, str]] = [
    (
        r"model_ema\..+",
        "EMA copy of the UNet: the raw weights are loaded (convert-ldm --ema makes a bundle of the EMA copy)",
    ),
    (
        r"cond_stage_model\.embedding\.weight",
        "class embedder (CompVis ClassEmbedder, e.g. cin256-v2's 1001 ImageNet classes): replaced by the text encoder",
    ),
    (r"(model\.diffusion_model\.)?label_emb\..+", "class embedder (UNetModel label_emb): replaced by the text encoder"),
    (r"first_stage_model\..+", "first stage (autoencoder): training reads latents made by the cache's own autoencoder"),
    (r"cond_stage_model\..+", "conditioning model: training reads the text cache's embeddings"),
]


@dataclass
class InitReport:
    """What a run started from: recorded in RUN/init.json and the run's manifest."""

    source: str
    kind: str  # bundle | run | compvis | compvis-unet
    sha256: str
    loaded: int
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def skipped_lines(skipped: list[dict[str, str]], names_shown: int = 3) -> list[str]:
    """The skipped keys grouped by reason, each group with its count and first names, so a group of one
    (cin256-v2's class embedder) is seen beside hundreds of first-stage tensors; groups in file order."""
    groups: dict[str, list[str]] = {}
    for s in skipped:
        groups.setdefault(s["reason"], []).append(s["key"])
    lines = []
    for reason, keys in groups.items():
        more = f", ... ({len(keys) - names_shown} more)" if len(keys) > names_shown else ""
        lines.append(
            f"skipped {len(keys)} {'tensor' if len(keys) == 1 else 'tensors'}, {reason}: "
            f"{', '.join(keys[:names_shown])}{more}"
        )
    return lines


def compvis_init(unet: torch.nn.Module) -> int:
    """CompVis openaimodel's zero_module: each resnet's output conv (conv2), each spatial transformer's
    proj_out and the final conv_out start at zero, so every block starts as the identity and the
    UNet predicts 0. Returns the number of tensors zeroed."""
    zeroed = 0
    for name, module in unet.named_modules():
        if (
            name == "conv_out"
            or re.search(r"\.resnets\.\d+\.conv2$", name)
            or re.search(r"\.attentions\.\d+\.proj_out$", name)
        ):
            for p in module.parameters(recurse=False):
                torch.nn.init.zeros_(p)
                zeroed += 1
    return zeroed


def _our_compvis_names(unet) -> dict[str, str]:
    cfg = unet.config
    return ck.unet_names(unet.state_dict().keys(), cfg.layers_per_block, cfg.up_block_types)


def _from_compvis(path: Path, unet) -> tuple[dict[str, torch.Tensor], list[dict[str, str]], str, dict[str, str]]:
    """Our-named UNet state dict from a CompVis file; every tensor under the UNet's prefix must be placed."""
    state = read_checkpoint(path)
    prefix = UNET_PREFIX if any(k.startswith(UNET_PREFIX) for k in state) else ""
    if not prefix and "input_blocks.0.0.weight" not in state:
        raise UserError(
            f"{path}: neither {UNET_PREFIX}* nor input_blocks.* keys, not a CompVis latent-diffusion UNet checkpoint"
        )
    _check_schedule(state, str(path))
    names = {ours: prefix + theirs for ours, theirs in _our_compvis_names(unet).items()}
    ours = {ours: state[theirs] for ours, theirs in names.items() if theirs in state}
    if missing := [theirs for theirs in names.values() if theirs not in state]:
        raise UserError(
            f"{path}: {len(missing)} UNet tensors missing for the {unet_label(unet)} UNet: {_preview(missing)}"
        )
    placed, skipped, unexpected = set(names.values()), [], []
    for key in state:
        if key in placed:
            continue
        reason = next((r for p, r in _INIT_SKIPS + SKIP_RULES if re.fullmatch(p, key)), None)
        if reason is None and prefix and not key.startswith(prefix):
            reason = "not part of the UNet"
        if reason:
            skipped.append({"key": key, "reason": reason})
        else:
            unexpected.append(key)
    if unexpected:
        raise UserError(
            f"{path}: {len(unexpected)} UNet tensors the {unet_label(unet)} UNet has no place for: "
            f"{_preview(unexpected)}"
        )
    return {k: ours[k] for k in names}, skipped, "compvis" if prefix else "compvis-unet", names


def unet_label(unet) -> str:
    return f"{'-'.join(str(c) for c in unet.config.block_out_channels)}-channel"


# The preset's UNet settings; heads and the time embedding change what the weights compute without changing
# any tensor's shape. A bundle or run made with others is refused. (Context width and latent channels come
# from the caches, not the preset: the shape check names them.)
_ARCHITECTURE = (
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "attention_head_dim",
    "flip_sin_to_cos",
    "freq_shift",
)


def _check_architecture(theirs: dict, unet, source: Path) -> None:
    """`theirs`: a saved UNet config.json, or a preset's constructor arguments (keys it lacks are not compared)."""

    def plain(v):
        return list(v) if isinstance(v, (list, tuple)) else v

    for key in (k for k in _ARCHITECTURE if k in theirs):
        if plain(theirs[key]) != plain(unet.config.get(key)):
            raise UserError(
                f"{source}: UNet {key} is {plain(theirs[key])}, the run's UNet preset has "
                f"{plain(unet.config.get(key))}; "
                "set model.unet_preset to the source's"
            )


def _from_histoldm(path: Path, unet) -> tuple[dict[str, torch.Tensor], str, Path]:
    """(state, kind, file hashed): a bundle's UNet, or a run's exported bundle / latest checkpoint."""
    if (path / META_FILE).is_file():
        kind, weights = "bundle", path / "unet" / "diffusion_pytorch_model.safetensors"
    elif (path / "model" / META_FILE).is_file():
        kind, weights = "run", path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    elif latest := read_latest(path):
        kind, weights = "run", path / "checkpoints" / latest / "model.safetensors"
    else:
        raise UserError(f"{path}: not a model bundle ({META_FILE}), a finished run (model/) or a run with a checkpoint")
    if not weights.is_file():
        raise UserError(f"{weights}: UNet weights missing")
    _check_architecture(_saved_architecture(weights, path), unet, path)
    return load_file(str(weights)), kind, weights


def _saved_architecture(weights: Path, path: Path) -> dict:
    """The source UNet's config: its config.json beside the weights, or for a run's checkpoint the preset in
    RUN/config.json."""
    try:
        if weights.parent.name == "unet":
            return json.loads((weights.parent / "config.json").read_text(encoding="utf-8"))
        return dict(
            UNET_PRESETS.get(json.loads((path / "config.json").read_text(encoding="utf-8"))["model"]["unet_preset"], {})
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: cannot read the UNet's configuration ({type(e).__name__}: {e})") from None


def _check_shapes(state: dict[str, torch.Tensor], unet, source: Path, names: dict[str, str]) -> None:
    """Context width first (the usual mistake: another text encoder), then every tensor's shape;
    tensors are named as the source names them."""
    want = unet.state_dict()
    attn2 = next((k for k in want if k.endswith("attn2.to_k.weight")), None)
    if attn2 and attn2 in state and state[attn2].shape[1] != want[attn2].shape[1]:
        raise UserError(
            f"{source}: UNet cross-attention takes {state[attn2].shape[1]}-wide context, the text cache's embeddings "
            f"are {want[attn2].shape[1]}-d ({names.get(attn2, attn2)} {tuple(state[attn2].shape)} vs "
            f"{tuple(want[attn2].shape)})"
        )
    if missing := sorted(set(want) - set(state)):
        raise UserError(
            f"{source}: {len(missing)} UNet tensors missing for the {unet_label(unet)} UNet, e.g. {missing[0]}"
        )
    if extra := sorted(set(state) - set(want)):
        raise UserError(
            f"{source}: {len(extra)} UNet tensors the {unet_label(unet)} UNet has no place for, e.g. {extra[0]}"
        )
    if bad := [k for k in want if state[k].shape != want[k].shape]:
        k = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(
            f"{source}: {names.get(k, k)} has shape {tuple(state[k].shape)}, the {unet_label(unet)} UNet expects "
            f"{tuple(want[k].shape)}{more}"
        )


def load_init_weights(source: Path, unet) -> InitReport:
    """Fill `unet` in place from `source`, checking every tensor; the report says what was loaded and skipped."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: model.init_from not found (a model bundle, run folder or CompVis checkpoint)")
    if source.is_dir():
        state, kind, hashed = _from_histoldm(source, unet)
        skipped: list[dict[str, str]] = []
        names: dict[str, str] = {}
    else:
        state, skipped, kind, names = _from_compvis(source, unet)
        hashed = source
    _check_shapes(state, unet, source, names)
    with torch.no_grad():
        unet.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return InitReport(
        source=str(source.resolve()), kind=kind, sha256=sha256_file(hashed), loaded=len(state), skipped=skipped
    )

"""Training checkpoints: tensors in safetensors, everything else in JSON, never pickle.

    RUN/checkpoints/step-00001000/
      model.safetensors      UNet weights (fp32 master copy)
      ema.safetensors        EMA weights, when EMA is on
      optimizer.safetensors  optimizer state tensors ("state.<param>.<key>")
      rng.safetensors        torch CPU / CUDA generator states of the main process
      state.json             step, data position, param groups, LR schedule and the optimizer settings it was
                             trained with, loss scaler, RNG (python, numpy) - written last: a folder without
                             it is not a checkpoint
    RUN/latest               the name of the newest complete checkpoint

A checkpoint is built in `.tmp-step-...`, renamed into place, and only then is `latest` replaced
(atomically). A kill at any moment leaves `latest` naming a complete checkpoint.

A resumed run keeps the optimizer's moments and the schedule's position but takes its hyper-parameters
(peak lr, betas, weight decay, eps, the schedule's settings) from the config it runs with: resuming with a
lower lr is how a run is usually cooled down. load_checkpoint returns what changed (old -> new).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from histoldm.errors import UserError
from histoldm.fileio import atomic_write_json, atomic_write_jsonl, atomic_write_text, follow_umask, read_jsonl

LATEST = "latest"
STATE = "state.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    follow_umask(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file missing")
    return load_file(str(path))


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate((state["python_rng"][0], tuple(state["python_rng"][1]), state["python_rng"][2]))
    np_state = state["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def optimizer_settings(optimizer, schedule: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a config sets (read from the first param group; every group gets the same),
    plus the settings the LR schedule's lambda was built from (e.g. warmup_steps)."""
    group = optimizer.param_groups[0]
    return {
        "lr": group["initial_lr"],
        "betas": list(group["betas"]),
        "weight_decay": group["weight_decay"],
        "eps": group["eps"],
        **schedule,
    }


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    ema,
    optimizer,
    lr_scheduler,
    scaler,
    data_position: int,
    keep: int,
    schedule: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` completely, then point `latest` at it, then drop the oldest beyond `keep`."""
    folder = run_dir / "checkpoints"
    name = checkpoint_name(step)
    final, tmp = folder / name, folder / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_tensors(model.state_dict(), tmp / "model.safetensors")
    if ema is not None:
        _save_tensors(ema.state_dict(), tmp / "ema.safetensors")
    opt = optimizer.state_dict()
    _save_tensors(
        {f"state.{i}.{k}": v for i, st in opt["state"].items() for k, v in st.items() if torch.is_tensor(v)},
        tmp / "optimizer.safetensors",
    )
    _save_tensors(_rng_tensors(), tmp / "rng.safetensors")
    np_state = np.random.get_state()
    state = {
        "step": step,
        "data_position": data_position,
        "ema_updates": ema.updates if ema is not None else None,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_scalars": {
            f"{i}.{k}": v for i, st in opt["state"].items() for k, v in st.items() if not torch.is_tensor(v)
        },
        "lr_scheduler": lr_scheduler.state_dict(),
        "optimizer_settings": optimizer_settings(optimizer, schedule or {}),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "python_rng": random.getstate(),
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    atomic_write_json(tmp / STATE, state)
    shutil.rmtree(final, ignore_errors=True)  # an older partial save of the same step
    os.replace(tmp, final)
    atomic_write_text(run_dir / LATEST, name + "\n")
    _rotate(folder, keep, protect=name)
    return final


def _rotate(folder: Path, keep: int, protect: str) -> None:
    complete = sorted(p for p in folder.glob("step-*") if (p / STATE).is_file())
    for old in complete[: max(0, len(complete) - keep)]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def _match_parameter_layout(optimizer) -> None:
    """Moments come back contiguous; give them their parameter's strides (channels_last weights), which
    fused AdamW requires on CUDA and silently mis-pairs on the CPU."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def truncate_stats(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from: the resumed session logs those steps again."""
    if Path(path).is_file():
        records = list(read_jsonl(path))
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            atomic_write_jsonl(path, kept)


def read_latest(run_dir: Path) -> str | None:
    path = Path(run_dir) / LATEST
    return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None


def clean_partial(run_dir: Path) -> None:
    """Remove leftovers of an interrupted save (never the checkpoint `latest` names)."""
    for tmp in (Path(run_dir) / "checkpoints").glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """`auto`: latest of this run if any; `latest`: must exist; `none`: start fresh; else a checkpoint
    folder, or a run folder (its latest)."""
    if resume == "none":
        return None
    if resume in ("auto", "latest"):
        name = read_latest(run_dir)
        if name is None:
            if resume == "latest":
                raise UserError(f"{run_dir / LATEST}: no checkpoint to resume from")
            return None
        path = run_dir / "checkpoints" / name
    else:
        path = Path(resume)
        if (path / LATEST).is_file():
            path = path / "checkpoints" / read_latest(path)
    if not (path / STATE).is_file():
        raise UserError(f"{path}: not a complete checkpoint ({STATE} missing)")
    return path


def _apply_settings(optimizer, lr_scheduler, settings: dict[str, Any]) -> None:
    """Give every param group the config's hyper-parameters and the scheduler the config's peak lr, and set
    the current lr to what the (LambdaLR) schedule gives at the resumed step with that peak."""
    for group in optimizer.param_groups:
        group.update(
            initial_lr=settings["lr"],
            betas=tuple(settings["betas"]),
            weight_decay=settings["weight_decay"],
            eps=settings["eps"],
        )
    lr_scheduler.base_lrs = [settings["lr"]] * len(optimizer.param_groups)
    lrs = [
        base * f(lr_scheduler.last_epoch)
        for base, f in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    lr_scheduler._last_lr = lrs  # what get_last_lr() reports until the next step


def describe_changes(changes: dict[str, list], prefix: str = "") -> str:
    """One line for the log: `optim.lr 2.5e-05 -> 1e-05, optim.warmup_steps 1000 -> 10`."""
    return ", ".join(f"{prefix}{k} {old} -> {new}" for k, (old, new) in changes.items())


def load_checkpoint(
    path: Path, *, model, ema, optimizer, lr_scheduler, scaler, schedule: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote, then apply the config's optimizer settings (the ones the
    optimizer was built with, plus `schedule`); returns the state (step, data_position, ...) with
    `optimizer_changes`: {setting: [checkpoint's, config's]} for each setting that differs."""
    configured = optimizer_settings(optimizer, schedule or {})
    state = json.loads((path / STATE).read_text(encoding="utf-8"))
    try:
        missing, unexpected = model.load_state_dict(_load_tensors(path / "model.safetensors"), strict=False)
    except RuntimeError as e:  # shape mismatches: another preset or context width
        raise UserError(
            f"{path / 'model.safetensors'}: does not fit this model ({str(e).splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:  # strict, with a one-line message instead of a key dump
        raise UserError(
            f"{path / 'model.safetensors'}: does not fit this UNet ({len(missing)} missing, {len(unexpected)} "
            "unexpected keys)"
        )
    if ema is not None:
        if state["ema_updates"] is None:
            raise UserError(f"{path}: checkpoint has no EMA weights but the config turns EMA on")
        ema.load_state_dict(_load_tensors(path / "ema.safetensors"), state["ema_updates"])
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in _load_tensors(path / "optimizer.safetensors").items():
        _, i, k = key.split(".", 2)
        opt_state.setdefault(int(i), {})[k] = value
    for key, value in state["optimizer_scalars"].items():
        i, k = key.split(".", 1)
        opt_state.setdefault(int(i), {})[k] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    _match_parameter_layout(optimizer)
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    saved = state.get("optimizer_settings") or optimizer_settings(
        optimizer, {}
    )  # older checkpoints: their param groups
    _apply_settings(optimizer, lr_scheduler, configured)
    state["optimizer_changes"] = {k: [saved[k], v] for k, v in configured.items() if k in saved and saved[k] != v}
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    _restore_rng(_load_tensors(path / "rng.safetensors"), state)
    return state

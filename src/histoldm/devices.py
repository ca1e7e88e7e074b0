"""Where stages run and at what precision: one policy, so every stage picks and refuses alike."""

from __future__ import annotations

import torch

from histoldm.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; asking for CUDA without one fails in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name}: no CUDA device available on this machine (use --device cpu)")
    return device


def require_bf16(device: torch.device) -> None:
    """bf16 on a GPU that lacks it would run, slowly and wrongly emulated; refuse before any compute."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision bf16: not supported by {torch.cuda.get_device_name(device)}; use fp32 (or fp16 for training)")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The `auto|bf16|fp32` policy of the encoding stages: auto is bf16 on a GPU and fp32 on the CPU."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        require_bf16(device)
        return torch.bfloat16
    return torch.float32

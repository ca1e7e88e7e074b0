"""Where stages run and at what precision: one policy, so every stage picks and refuses alike."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Processes:
    """This process's place among those `accelerate launch` started (rank 0 of 1 when run plainly):
    a stage splits its work by `rank`, waits at `barrier`, and lets the main process merge."""

    rank: int
    world: int
    device: torch.device
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_processes(device_name: str, stage: str) -> Processes:
    """One process on `resolve_device(device_name)`, or under `accelerate launch` this process's rank,
    the world size and its own device (cuda:LOCAL_RANK, or the CPU with gloo)."""
    device = resolve_device(device_name)  # refuses CUDA on a machine without it, before any process group
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched == 1:
        return Processes(0, 1, device, lambda: None)
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes != launched:  # each process would think it is alone and redo all the work
        raise UserError(f"{stage}: launched as {launched} processes, but accelerate set up {state.num_processes} ({state.distributed_type})")
    return Processes(state.process_index, state.num_processes, state.device, state.wait_for_everyone)

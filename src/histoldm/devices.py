"""Where stages run and at what precision: one policy, so every stage picks and refuses alike."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from histoldm.config import DTYPE_CHOICES, Numerics, normalise_dtype_name
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


# The torch dtype of each name of the configs' vocabulary (histoldm.config.DtypeName; `auto` is resolved below).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device, *, stage: str, training: bool = False) -> torch.dtype:
    """The one precision policy of every stage, checked before any compute.

    auto: bfloat16 on a CUDA device that supports it, float32 anywhere else (a GPU without bf16, the CPU).
    bfloat16 on a CUDA device without it is refused (it would run emulated, slowly); on the CPU it runs.
    float16: training (`training=True`) needs accelerate's loss scaler, hence a GPU; inference runs it anywhere.
    `stage` names the stage and key in the error line, e.g. "train precision"."""
    name = str(normalise_dtype_name(name))
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if name == "auto":
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise UserError(f"{stage} {name}: expected one of {', '.join(DTYPE_CHOICES)}")
    if name == "bfloat16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"{stage} bfloat16: not supported by {torch.cuda.get_device_name(device)}; use float32 (or float16)"
        )
    if name == "float16" and training and not on_cuda:
        raise UserError(
            f"{stage} float16: training in float16 needs a GPU (its loss scaler); use bfloat16 or float32 on the CPU"
        )
    return DTYPES[name]


def training_memory_format(channels_last: bool | None, device: torch.device) -> torch.memory_format:
    """The layout a training loop holds its model and batches in: channels_last when asked, and by default
    (None) on the CPU only, where NHWC convolutions measured 0-20% faster a step and on CUDA slower."""
    nhwc = channels_last if channels_last is not None else torch.device(device).type == "cpu"
    return torch.channels_last if nhwc else torch.contiguous_format


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the vocabulary's name of a resolved dtype, as outputs record it."""
    return str(dtype).removeprefix("torch.")


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
        raise UserError(
            f"{stage}: launched as {launched} processes, but accelerate set up {state.num_processes} "
            f"({state.distributed_type})"
        )
    return Processes(state.process_index, state.num_processes, state.device, state.wait_for_everyone)


@dataclass(frozen=True)
class SamplingNumerics:
    """How text encoding and sampling compute: `numerics: pathldm` reproduces PathLDM's
    (fp32 text encoder, fp32 UNet weights under fp16 autocast, 8-bit by truncation)."""

    profile: Numerics
    text_dtype: str  # the text encoder's dtype name, resolved by `resolve_dtype` where the encoder is loaded
    weights: torch.dtype  # the UNet's weights
    autocast: torch.dtype | None  # autocast around the UNet calls; None = none
    truncate: bool  # to 8-bit by truncation (PathLDM) instead of rounding

    def record(self) -> dict:
        return {
            "precision": self.profile,  # the key sample folders' settings.json holds: renaming it refuses their resume
            "text_dtype": self.text_dtype,
            "weights": dtype_name(self.weights),
            "autocast": dtype_name(self.autocast) if self.autocast else None,
            "to_uint8": "truncate" if self.truncate else "round",
        }


def text_dtype(numerics: Numerics, dtype: str) -> str:
    """The text encoder's dtype name: PathLDM encodes in fp32; asking for pathldm and another dtype is a
    contradiction."""
    if numerics == "pathldm":
        if dtype not in ("auto", "float32"):
            raise UserError(f"numerics pathldm encodes text in float32; drop dtype {dtype} (or use numerics default)")
        return "float32"
    return dtype


def sampling_numerics(numerics: Numerics, dtype: str, device: torch.device) -> SamplingNumerics:
    """`default`: the UNet in `resolve_dtype(dtype)`, no autocast, rounding.
    `pathldm`: fp32 weights under fp16 autocast (on the CPU too: torch's CPU autocast takes fp16; tested on 2.13),
    truncation."""
    if numerics == "pathldm":
        return SamplingNumerics("pathldm", text_dtype(numerics, dtype), torch.float32, torch.float16, True)
    return SamplingNumerics("default", dtype, resolve_dtype(dtype, device, stage="sample dtype"), None, False)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def busy_cores(interval: float = 0.3) -> float | None:
    """Cores' worth of CPU time the machine spent busy over the next `interval` seconds (Linux /proc/stat;
    None elsewhere). Sampled while this process sleeps, so it is what other processes use."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None

    def sample() -> tuple[int, int]:
        ticks = [
            int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]
        ]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4]

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def threads_beside(cores: int, busy: float) -> int:
    """Threads for `cores` cores when other processes keep `busy` cores' worth of them running: one per free core."""
    return max(1, min(cores, cores - round(busy)))


def default_cpu_threads() -> int:
    """One thread per core that no other process is using when the demo starts (every core on an idle machine,
    torch's own default). Idle, 2 threads on 2 cores run the demo about 1.5x as fast as 1; with a core busy
    elsewhere, a thread per core waits at every op's barrier for a descheduled thread, many times slower per
    step than one thread (docs/performance.md). `--threads N` overrides, and so does OMP_NUM_THREADS
    (which `accelerate launch` and `torchrun` set to share the cores among their processes)."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = available_cores()
    busy = busy_cores()
    if busy is None:
        return cores
    return threads_beside(cores, busy * cores / (os.cpu_count() or cores))  # the share of the busy cores that are ours


def set_cpu_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads (None = `default_cpu_threads()`); returns the number in use."""
    if threads is not None and threads < 1:
        raise UserError(f"threads {threads}: must be at least 1")
    torch.set_num_threads(threads or default_cpu_threads())
    return torch.get_num_threads()


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, macOS sysctl), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_facts() -> dict[str, str | int]:
    """What a timing needs beside it: CPU model, cores available to this process, torch threads in use."""
    return {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "machine_cores": os.cpu_count() or 0,
        "threads": torch.get_num_threads(),
    }

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


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_cpu_threads() -> int:
    """Half the cores, at least one. torch's default (every core) makes each small op wait at an OpenMP
    barrier for a thread the OS has lent to another process: beside one CPU-heavy process on 2 cores the
    demo's training steps ran ~6x slower with 2 threads than with 1 (benchmarks/RESULTS.md, issue 18)."""
    return max(1, available_cores() // 2)


def set_cpu_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads (None = `default_cpu_threads()`); returns the number in use."""
    if threads is not None and threads < 1:
        raise UserError(f"threads {threads}: must be at least 1")
    torch.set_num_threads(threads or default_cpu_threads())
    return torch.get_num_threads()


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, macOS sysctl), else what `platform` knows."""
    import platform
    import subprocess
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_facts() -> dict[str, str | int]:
    """What a timing needs beside it: CPU model, cores available to this process, torch threads in use."""
    import os

    return {"cpu": cpu_model(), "cores": available_cores(), "machine_cores": os.cpu_count() or 0, "threads": torch.get_num_threads()}

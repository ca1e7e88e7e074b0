"""Peak resident memory (RSS) of this process over one stage: the memory figure a CPU run has.

On a GPU, torch's allocator counts training memory exactly; on the CPU nothing does, so the sweep
measures the process instead. RSS counts the whole process (Python, torch, data already loaded,
heap that earlier stages freed but the allocator kept), so the stage's peak is reported beside its
rise above the RSS at the stage's start. The peak is sampled by a thread every `interval` seconds
and, where the kernel keeps the lifetime high-water mark (getrusage ru_maxrss: Linux, macOS),
taken exactly whenever the stage raised that mark.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType

import psutil

GIB = 2**30


def _lifetime_peak_bytes() -> int | None:
    """The process's RSS high-water mark so far (None where getrusage is missing, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


class PeakRSS:
    """`with PeakRSS() as rss: stage()`, then `rss.result()`: start, peak and rise in GiB."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start_bytes = self.peak_bytes = 0
        self._lifetime_at_start: int | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._lifetime_at_start = _lifetime_peak_bytes()
        self.start_bytes = self.peak_bytes = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        lifetime = _lifetime_peak_bytes()
        if lifetime is not None and self._lifetime_at_start is not None and lifetime > self._lifetime_at_start:
            self.peak_bytes = max(self.peak_bytes, lifetime)  # the stage set a new high: the kernel's exact peak

    def result(self) -> dict[str, float | str]:
        return {
            "peak_rss_gib": round(self.peak_bytes / GIB, 3),
            "start_rss_gib": round(self.start_bytes / GIB, 3),
            "rise_gib": round((self.peak_bytes - self.start_bytes) / GIB, 3),
            "measured": (
                f"process RSS sampled every {self.interval:g} s, plus getrusage ru_maxrss when the stage set a new high"
            ),
        }

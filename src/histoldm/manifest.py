"""The JSON manifest every stage writes beside its output: what went in, how, and what came out.

A number is only reproducible if its inputs, config, seed and software versions are on record.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from histoldm.fileio import atomic_write_json, sha256_path

_PACKAGES = ("histoldm", "torch", "diffusers", "transformers", "accelerate", "numpy", "openslide-python")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the histoldm source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe_inputs(inputs: dict[str, Path | str | None]) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for name, p in inputs.items():
        if p is None:
            continue
        path = Path(p)
        if path.exists():
            described[name] = {
                "path": str(path.resolve()),
                "sha256": sha256_path(path),
                "hash_of": "content" if path.is_file() else "listing",
            }
        else:  # a hub id or other non-file reference
            described[name] = {"ref": str(p)}
    return described


def write_manifest(
    path: Path,
    *,
    stage: str,
    config: BaseModel | dict[str, Any],
    inputs: dict[str, Path | str | None],
    produced: dict[str, Any],
    started: float,
    seed: int | None = None,
    skipped: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the manifest atomically to `path` and return it.

    `skipped` lists what was left out, each with the reason; `started` is time.time() at the start.
    """
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": round(time.time() - started, 3),
        "seed": seed,
        "config": cfg,
        "inputs": describe_inputs(inputs),
        "produced": produced,
        "skipped": skipped or [],
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    if "torch" in sys.modules:  # a torch stage: how many CPU threads it ran with (--threads)
        manifest["torch_threads"] = sys.modules["torch"].get_num_threads()
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(path), manifest)
    return manifest


def stage_times(manifests: dict[str, Path]) -> list[tuple[str, str, float]]:
    """(label, stage, seconds) per manifest that records a wall time, in the order they were written.

    Manifests keep the time of the run that made them: a resumed stage shows its first run's time."""
    rows = []
    for label, path in sorted(
        manifests.items(), key=lambda item: Path(item[1]).stat().st_mtime if Path(item[1]).exists() else 0
    ):
        try:
            manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(manifest.get("wall_time_s"), (int, float)):
            rows.append((label, str(manifest.get("stage", "")), float(manifest["wall_time_s"])))
    return rows

"""The configs shipped inside the package, and what a `--config` value names.

The YAML files live once, in histoldm/resources/configs (the repository's `configs/` links there), so an
installed package has them wherever it runs: `--config pathldm` names a shipped config from any folder,
and `histoldm config show pathldm > my.yaml` copies one to edit.
"""

from __future__ import annotations

from pathlib import Path

from histoldm.errors import UserError

SHIPPED_DIR = Path(__file__).resolve().parent / "resources" / "configs"


def shipped_configs() -> dict[str, Path]:
    """name (the file's stem) -> path of every shipped config, sorted by name."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def shipped_config(name: str) -> Path:
    """The shipped config called `name` (`pathldm` or `pathldm.yaml`), or a UserError listing them."""
    found = shipped_configs().get(name.removesuffix(".yaml"))
    if found is None:
        raise UserError(f"{name}: no shipped config of that name; shipped: {', '.join(shipped_configs())}")
    return found


def config_file(value: Path | str) -> Path:
    """The file a `--config` value names: an existing file, else a shipped config's name (no folder in it)."""
    path = Path(value)
    if path.is_file():
        return path
    if len(path.parts) == 1 and path.name.removesuffix(".yaml") in shipped_configs():
        return shipped_config(path.name)
    raise UserError(
        f"{value}: config file not found; a shipped config is named without a folder "
        f"(--config {' | '.join(shipped_configs())}; `histoldm config show NAME > my.yaml` copies one)"
    )

"""Imports only go down the layers (docs/layout.md): a stage never imports a stage above it, shared
modules import no stage, and nothing below the CLI imports the experiments or the commands."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import histoldm

PACKAGE = Path(histoldm.__file__).parent

# Bottom to top. Shared modules (top-level files of the package) sit below every stage; each stage may
# import shared modules and the stages listed before it; the experiments chain stages; commands and the
# CLI sit on top.
STAGES = ["text", "models", "data", "summaries", "sampling", "train", "evaluate"]
ORDER = ["shared", *STAGES, "experiments", "commands"]


def layer_of(module: str) -> str:
    """histoldm.<part>... -> its layer name."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return "commands" if len(parts) > 1 else "shared"
    top = parts[1]
    if top in ORDER:
        return top
    return "shared"  # a top-level module: config, fileio, devices, manifest, tables, ...


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def histoldm_imports(path: Path) -> list[tuple[int, str]]:
    """Every `histoldm...` module imported anywhere in the file (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "histoldm"
        ):
            if node.module == "histoldm":  # `from histoldm import x`: x is the module
                found += [(node.lineno, f"histoldm.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "histoldm"]
    return found


def layer_violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        here = layer_of(importer)
        for line, imported in histoldm_imports(path):
            there = layer_of(imported)
            if imported == "histoldm" or there == here:
                continue
            if ORDER.index(there) > ORDER.index(here) or (here == "shared" and there != "shared"):
                bad.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {imported} ({there} is not below "
                    f"{here})"
                )
    return bad


def test_imports_only_go_down_the_layers():
    assert layer_violations() == []


def test_the_walk_sees_a_violation(tmp_path, monkeypatch):
    """The walk itself must catch an upward import (a stage reaching for the experiments)."""
    fake = tmp_path / "histoldm"
    (fake / "train").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "train" / "__init__.py").write_text("")
    (fake / "train" / "loop.py").write_text("def f():\n    from histoldm.experiments.chain import ModelRecipe\n")
    (fake / "fileio.py").write_text("from histoldm.data.store import PatchStore\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = layer_violations()
    assert len(found) == 2
    assert any("train imports histoldm.experiments.chain" in v for v in found)
    assert any("shared imports histoldm.data.store" in v for v in found)


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(ORDER), f"a package folder not in the layer order: {folders - set(ORDER)}"

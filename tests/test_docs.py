"""The repository's markdown stands on its own: no doc points into a folder outside the repository (a reader of
a clone has none), and every relative link resolves to a file in it. benchmarks/RESULTS.md is the dated record
and may name the paths a measurement used."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "benchmarks" / "RESULTS.md"
SKIP = {".git", ".venv", "node_modules", ".whl", ".gpu"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    """Every *.md of the repository outside virtual environments and build folders."""
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts))


def test_no_doc_cites_a_path_outside_the_repository():
    offenders = [str(p.relative_to(ROOT)) for p in markdown_files() if p != RECORD and "../shared" in p.read_text()]
    assert not offenders, f"markdown citing ../shared (describe it or link its public URL): {offenders}"


def test_relative_links_resolve():
    broken = []
    for path in markdown_files():
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:|#", target):
                continue
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, f"relative links that resolve to nothing: {broken}"

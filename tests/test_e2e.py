"""End to end on the embedded data: the demo (every stage, report) and the summary-length sweep,
both at a scale that fits the test budget (fewer steps and images than `histoldm demo`)."""

import csv
import json
import math

import pytest

from histoldm.cli import main

TINY = [
    "--set", "data.synthetic_cases=3", "--set", "data.tiles_per_case=4",
    "--set", "recipe.image_size=32", "--set", "recipe.autoencoder_steps=4", "--set", "recipe.autoencoder_batch_size=4",
    "--set", "recipe.train_steps=6", "--set", "recipe.batch_size=8", "--set", "recipe.log_every=2",
    "--set", "recipe.sample_steps=4", "--set", "recipe.n_samples=6",
]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), *TINY]) == 0
    return out


def test_demo_writes_report_with_images_metrics_and_manifests(demo_out, capsys):
    report = (demo_out / "report.html").read_text()
    assert "FID" in report and "KID" in report and "Inception" in report  # protocol beside the numbers
    metrics = json.loads((demo_out / "model" / "eval" / "metrics.json").read_text())
    assert math.isfinite(metrics["fid"]["value"]) and math.isfinite(metrics["kid"]["mean"])
    held_out = (demo_out / "model" / "held-out-captions.jsonl").read_text().splitlines()
    generated = [json.loads(line) for line in (demo_out / "model" / "samples" / "index.jsonl").read_text().splitlines()]
    assert len(generated) == len(held_out) >= 4
    assert all((demo_out / "model" / "samples" / g["file"]).is_file() for g in generated)
    assert report.count("<img") >= 2 * len(held_out)  # real and generated patches by caption
    for stage in ("summaries.jsonl.manifest.json", "data/store-slide/manifest.json", "latents/manifest.json",
                  "model/run/manifest.json", "model/samples/manifest.json", "model/eval/manifest.json"):
        manifest = json.loads((demo_out / stage).read_text())
        assert manifest["versions"]["torch"] and "config" in manifest, stage


def test_demo_rerun_resumes_finished_stages(demo_out):
    before = (demo_out / "model" / "samples" / "index.jsonl").read_bytes()
    assert main(["demo", "--out", str(demo_out), *TINY]) == 0
    assert (demo_out / "model" / "samples" / "index.jsonl").read_bytes() == before


def test_sweep_writes_table_and_plot(tmp_path):
    out = tmp_path / "sweep"
    args = [a.replace("data.", "demo_data.") for a in TINY]
    assert main(["sweep", "--out", str(out), "--budgets", "20", "154", *args]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["budget"]) for r in rows] == [20, 154]
    assert float(rows[0]["mean_summary_tokens"]) <= 20 < float(rows[1]["mean_summary_tokens"])
    assert all(float(r["fid"]) >= 0 for r in rows)
    assert "FID protocol:" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0

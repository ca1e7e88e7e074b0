"""End to end on the embedded data: the demo (every stage, report) and the summary-length sweep,
both at a scale that fits the test budget (fewer steps and images than `histoldm demo`)."""

import csv
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from histoldm.cli import main

TINY = [
    "--set",
    "data.synthetic_cases=3",
    "--set",
    "data.tiles_per_case=4",
    "--set",
    "recipe.image_size=32",
    "--set",
    "recipe.train_vae.steps=4",
    "--set",
    "recipe.train_vae.batch_size=4",
    "--set",
    "recipe.train.max_steps=6",
    "--set",
    "recipe.train.batch_size=8",
    "--set",
    "recipe.train.log_every=2",
    "--set",
    "recipe.sample.steps=4",
    "--set",
    "recipe.n_samples=6",
    "--set",
    "recipe.train_vae.crop=16",
    "--set",
    "recipe.train.optim.min_snr_gamma=5",
]
DEMO_ONLY = ["--set", "utility_samples=24"]  # training captions sampled for the utility evaluation
# the 4-step student, distilled for a few steps
TURBO = ["--with-turbo", "--set", "recipe.distill.max_steps=3", "--set", "recipe.distill.batch_size=4"]
TURBO_FILES = ("run-turbo", "samples-turbo", "eval-turbo", "distill-cost.json")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), *TINY, *DEMO_ONLY]) == 0
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
    region = json.loads(
        (demo_out / "region" / "index.jsonl").read_text().splitlines()[0]
    )  # the large region, 8 model images across
    assert (
        region["size"] == 8 * 32
        and "region/map-and-region.png" in report
        and (demo_out / "region" / region["file"]).is_file()
    )
    floor = json.loads((demo_out / "model" / "noise-floor" / "metrics.json").read_text())
    assert floor["fid"]["value"] > 0 and f"(floor {floor['fid']['value']:.2f})" in report  # the FID's noise beside it
    for stage in (
        "summaries.jsonl.manifest.json",
        "data/store-slide/manifest.json",
        "latents/manifest.json",
        "model/run/manifest.json",
        "model/samples/manifest.json",
        "model/eval/manifest.json",
        "model/samples-seed1/manifest.json",
        "model/noise-floor/manifest.json",
    ):
        manifest = json.loads((demo_out / stage).read_text())
        assert manifest["versions"]["torch"] and "config" in manifest, stage
    # real tissue held out: its captions lead the grid, its numbers stand apart, and the utility plot is shown
    assert report.index("[real tissue]") < report.index("[synthetic cases]") < report.index("Training loss")
    utility = json.loads((demo_out / "model" / "utility" / "metrics.json").read_text())["utility"]
    assert set(utility["by_attribute"]["tumor"]["held_out"]) == {"all", "real tissue", "synthetic cases"}
    assert utility["by_attribute"]["tumor"]["held_out"]["real tissue"]["n"] >= 1 and "linear probe" in report
    assert 'src="model/utility/utility.png"' in report and (demo_out / "model" / "utility" / "utility.png").is_file()
    groups = json.loads((demo_out / "model" / "held-out-groups.json").read_text())
    assert groups["real tissue"]["n_real"] + groups["synthetic cases"]["n_real"] == len(held_out)
    assert (
        json.loads((demo_out / "vae" / "manifest.json").read_text())["config"]["crop"] == 16
    )  # recipe keys reach their stage
    assert json.loads((demo_out / "model" / "run" / "config.json").read_text())["optim"]["min_snr_gamma"] == 5
    # without --with-turbo: no student, no file or row of it
    assert not any((demo_out / "model" / name).exists() for name in TURBO_FILES) and "student" not in report


def test_demo_says_where_the_time_went(demo_out):
    """Report, timing.json and the benchmark's table give seconds per stage, the machine and the total."""
    import importlib.util
    from pathlib import Path

    from histoldm.devices import cpu_model

    timing = json.loads((demo_out / "timing.json").read_text())
    stages = timing["stages_s"]
    assert {
        "tile",
        "synthetic",
        "summarize",
        "train-vae",
        "encode-latents",
        "encode-text",
        "train",
        "sample",
        "evaluate",
        "utility",
    } <= set(stages)
    assert not {"distill", "sample-turbo"} & set(stages)  # without --with-turbo
    assert all(s >= 0 for s in stages.values()) and timing["other_s"] >= 0
    assert sum(stages.values()) + timing["other_s"] == pytest.approx(timing["total_s"], abs=0.5)
    assert timing["machine"]["cpu"] == cpu_model() and timing["machine"]["threads"] >= 1
    report = (demo_out / "report.html").read_text()
    assert "Time per stage" in report and "train-vae" in report and cpu_model() in report
    spec = importlib.util.spec_from_file_location(
        "bench_demo", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.bench_table(demo_out, 1.0, (0.5,), (0.7,), compete=False)
    assert (
        "| train |" in table and "| train-vae |" in table and cpu_model() in table and "tumor adherence AUROC" in table
    )


def test_demo_rerun_resumes_finished_stages_and_adds_the_student_with_turbo(demo_out, capsys):
    """A re-run with --with-turbo keeps the finished stages and adds the 4-step student beside DDIM-50: its
    samples of the same held-out captions and seed, their metrics, its rows, grid and stage times; a further
    re-run finds the distillation finished."""
    from histoldm.train.config import DistillConfig
    from histoldm.train.distill import run_distill

    model = demo_out / "model"
    before = (model / "samples" / "index.jsonl").read_bytes()
    assert main(["demo", "--out", str(demo_out), *TINY, *DEMO_ONLY, *TURBO, "--threads", "1"]) == 0
    assert (model / "samples" / "index.jsonl").read_bytes() == before
    last = capsys.readouterr().out.strip().splitlines()[-1]  # the final line: total, machine, threads, per stage
    assert (
        last.startswith("demo finished in ")
        and "1 torch thread" in last
        and "train-vae " in last
        and "distill " in last
        and "sample-turbo " in last
        and "report.html" in last
    )
    ddim = [json.loads(line) for line in (model / "samples" / "index.jsonl").read_text().splitlines()]
    turbo = [json.loads(line) for line in (model / "samples-turbo" / "index.jsonl").read_text().splitlines()]
    assert [(r["id"], r["caption"], r["seed"]) for r in turbo] == [(r["id"], r["caption"], r["seed"]) for r in ddim]
    assert all((model / "samples-turbo" / r["file"]).is_file() for r in turbo)
    settings = json.loads((model / "samples-turbo" / "settings.json").read_text())
    assert (settings["solver"], settings["steps"]) == ("lcm", 4)
    metrics = json.loads((model / "eval-turbo" / "metrics.json").read_text())
    assert math.isfinite(metrics["fid"]["value"]) and "tumor" in metrics["adherence"]["by_attribute"]
    assert (
        metrics["fid"]["protocol"]["n_real"]
        == json.loads((model / "eval" / "metrics.json").read_text())["fid"]["protocol"]["n_real"]
    )  # the same real held-out patches
    report = (demo_out / "report.html").read_text()
    assert f"4-step student (--with-turbo): FID</td><td>{metrics['fid']['value']:.2f} (floor" in report
    assert "4-step student (--with-turbo): UNet passes per image</td><td>4 (DDIM-4: 8)" in report
    assert "4-step student (--with-turbo): distillation</td><td>3 steps in " in report
    assert "4-step student (--with-turbo): wall time per image</td><td>" in report
    assert 'src="model/samples-turbo/grid.png"' in report
    assert {"distill", "sample-turbo"} <= set(json.loads((demo_out / "timing.json").read_text())["stages_s"])

    # the re-run's distillation, as the demo calls it: finished, so no step is taken and nothing is rewritten
    stats = (model / "run-turbo" / "stats.jsonl").read_bytes()
    again = run_distill(DistillConfig.model_validate_json((model / "run-turbo" / "config.json").read_text()))
    assert again.steps == 3 and (model / "run-turbo" / "stats.jsonl").read_bytes() == stats
    assert [p.name for p in (model / "run-turbo" / "checkpoints").iterdir()] == ["step-00000003"]


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    args = [a.replace("data.", "demo_data.") for a in TINY] + [
        "--set",
        "demo_data.visible_facts=[necrosis,grade,growth]",
        "--set",
        "seeds=[0,1]",
    ]
    assert main(["sweep", "--out", str(out), "--budgets", "20", "154", *args]) == 0
    return out


def test_sweep_table_has_per_fact_adherence_columns(sweep_out):
    """Drawn with visible facts, each row says how many summaries carry each fact and its adherence."""
    rows = list(csv.DictReader((sweep_out / "results.csv").open()))
    attributes = pq.read_table(sweep_out / "data" / "store-synthetic" / "attributes.parquet")
    truth = {r["patch_id"]: r for r in attributes.to_pylist()}
    for fact in ("necrosis", "grade", "growth"):
        assert fact in attributes.column_names
        assert all(0 <= float(r[f"{fact}_in_summaries"]) <= 1 for r in rows)
        columns = {"auroc", "p", "real_auroc", "truth_auroc", "truth_p"}
        assert {f"adherence_{fact}_{c}" for c in columns} <= set(rows[0])
        for r in rows:  # by truth: measured exactly where the sampled synthetic images' cases hold both sides
            folder = sweep_out / (f"budget-{r['budget']}" + ("-seed1" if r["seed"] == "1" else "")) / "samples"
            ids = [json.loads(line)["id"] for line in (folder / "index.jsonl").read_text().splitlines()]
            sides = {truth[i][fact] for i in ids if i in truth}
            assert (r[f"adherence_{fact}_truth_auroc"] != "") == (len(sides) == 2)
    for r in rows:  # the tumor / TIL ceiling: the same test on the real held-out images, under the same captions
        for attribute in ("tumor", "til"):
            generated, real = r[f"adherence_{attribute}_auroc"], r[f"adherence_{attribute}_real_auroc"]
            assert (generated == "") == (real == "") and (real == "" or 0 <= float(real) <= 1)
    assert "adherence_tumor_real_auroc" in (sweep_out / "results.md").read_text()
    assert "adherence_grade_real_auroc" in (sweep_out / "results.md").read_text()
    assert "adherence_grade_real_auroc" in (sweep_out / "report.html").read_text()


def test_sweep_runs_every_budget_per_seed_and_compares_them_across_seeds(sweep_out):
    """seeds: [0, 1] trains, samples and evaluates each budget twice; the across-seeds table gives both values."""
    rows = list(csv.DictReader((sweep_out / "results.csv").open()))
    assert [(int(r["budget"]), int(r["seed"])) for r in rows] == [(20, 0), (20, 1), (154, 0), (154, 1)]
    rows_dirs = ["budget-20", "budget-20-seed1"]
    seeds = [json.loads((sweep_out / d / "samples" / "manifest.json").read_text())["seed"] for d in rows_dirs]
    assert seeds == [0, 1]
    assert (sweep_out / "budget-20-seed1" / "run" / "model").is_dir()  # a model of its own, not a resample
    assert not (sweep_out / "budget-20-seed1" / "summaries.jsonl").exists()  # the budget's summaries are shared
    markdown = (sweep_out / "results.md").read_text()
    table = markdown.split("## Across seeds")[1]
    for budget in (20, 154):
        values = [float(r["fid"]) for r in rows if int(r["budget"]) == budget]
        cells = next(line for line in table.splitlines() if line.startswith(f"| {budget} |")).split(" | ")
        assert cells[1].startswith(f"{sum(values) / 2:.2f} ({values[0]:.2f} / {values[1]:.2f})")
    assert "| noise |" in table and "adherence_necrosis_auroc" in table and "inside the noise" in markdown
    assert "Across seeds" in (sweep_out / "report.html").read_text()


def test_sweep_writes_table_and_plot(sweep_out):
    out = sweep_out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [int(r["budget"]) for r in rows] == [20, 20, 154, 154]
    assert float(rows[0]["mean_summary_tokens"]) <= 20 < float(rows[2]["mean_summary_tokens"])
    assert all(float(r["fid"]) >= 0 for r in rows)
    assert "FID protocol:" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0


def test_sweep_rows_get_the_context_their_budget_needs_and_cpu_memory(sweep_out):
    from histoldm.experiments.sweep import row_name

    rows = {(int(r["budget"]), int(r["seed"])): r for r in csv.DictReader((sweep_out / "results.csv").open())}
    assert int(rows[20, 1]["text_context"]) < int(rows[154, 1]["text_context"])
    for (budget, seed), row in rows.items():
        meta = json.loads((sweep_out / row_name(budget, seed, 0) / "text-cache" / "meta.json").read_text())
        assert meta["length"] == int(row["text_context"]) and meta["n_truncated"] == int(row["truncated_captions"]) == 0
        assert row["peak_train_memory_gib"] == ""  # no GPU memory on CPU ...
        assert (
            float(row["peak_train_rss_gib"]) > 0 and float(row["train_rss_rise_gib"]) >= 0
        )  # ... the process RSS instead


def test_sweep_noise_floor_compares_two_seeds_of_the_same_captions(sweep_out):
    from PIL import Image

    work = sweep_out / "budget-20"
    first = [json.loads(line) for line in (work / "samples" / "index.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (work / "samples-seed1" / "index.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in first] == [r["caption"] for r in second] and {r["seed"] for r in first} != {
        r["seed"] for r in second
    }
    pixels = [
        np.asarray(Image.open(work / folder / r["file"]), dtype=np.int16)
        for folder, r in (("samples", first[0]), ("samples-seed1", second[0]))
    ]
    assert np.abs(pixels[0] - pixels[1]).mean() > 1  # another seed, another image
    floor = json.loads((work / "noise-floor" / "metrics.json").read_text())
    assert floor["fid"]["value"] > 0 and floor["fid"]["protocol"]["seeds"] == [0, 1]
    rows = list(csv.DictReader((sweep_out / "results.csv").open()))
    assert float(rows[0]["fid_floor"]) == pytest.approx(floor["fid"]["value"], abs=1e-3)
    assert all(r["kid_floor"] != "" for r in rows)
    assert "seed-to-seed" in (sweep_out / "results.md").read_text()


def test_sweep_floor_refuses_one_seed_twice(sweep_out, tmp_path):
    from histoldm.errors import UserError
    from histoldm.evaluate.config import SeedFloorConfig
    from histoldm.evaluate.noise_floor import run_seed_floor

    samples = sweep_out / "budget-20" / "samples"
    with pytest.raises(UserError, match="same seed"):
        run_seed_floor(SeedFloorConfig(first=samples, second=samples, out=tmp_path))


def test_floor_reuses_the_first_sets_features_only_for_its_own_images(sweep_out, tmp_path):
    from histoldm.errors import UserError
    from histoldm.evaluate import features as F
    from histoldm.evaluate.config import SeedFloorConfig
    from histoldm.evaluate.noise_floor import run_seed_floor
    from histoldm.evaluate.run import fake_image_paths

    work = sweep_out / "budget-20"
    cfg = SeedFloorConfig(first=work / "samples", second=work / "samples-seed1", out=tmp_path / "a", kid_subsets=10)
    given = F.extract_features(fake_image_paths(cfg.first), F.load_extractor(), workers=0)
    fresh = run_seed_floor(cfg).metrics
    reused = run_seed_floor(cfg.model_copy(update={"out": tmp_path / "b"}), first_features=given).metrics
    assert reused.fid.value == pytest.approx(fresh.fid.value, rel=1e-6)
    assert reused.kid.mean == pytest.approx(fresh.kid.mean, rel=1e-6, abs=1e-9)
    others = F.FeatureSet(given.features[:-1], given.paths[:-1], [], given.image_format)
    with pytest.raises(UserError, match="other images"):
        run_seed_floor(cfg.model_copy(update={"out": tmp_path / "c"}), first_features=others)


def test_sweep_html_report_shows_each_budget(sweep_out):
    html = (sweep_out / "report.html").read_text()
    for budget in (20, 154):
        for seed in (0, 1):  # metrics with floor, example captions
            assert f"budget {budget} seed {seed}: FID" in html and f"[budget {budget} seed {seed}] " in html
    assert (
        "floor" in html
        and "tokens.png" in html
        and "results.png" in html
        and (sweep_out / "tokens.png").stat().st_size > 0
    )

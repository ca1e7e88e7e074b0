"""The utility evaluation (train on synthetic, test on real; augmentation curves) and its leakage guard,
on small built sets whose images carry their caption's level in their colour, with a real TorchScript
extractor (4x4 average pool of RGB)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builders import save_pool_extractor
from histoldm.cli import main
from histoldm.evaluate.config import UtilityConfig
from histoldm.evaluate.utility import bootstrap_scores, fit_probe, run_utility

TRAIN_CASES = [f"T{i}" for i in range(6)]
TEST_CASES = [f"H{i}" for i in range(6)]


def _image(path: Path, high: bool, rng: np.random.Generator, shift: float) -> None:
    """32 px noise whose red channel is raised by `shift` when the level is high."""
    px = rng.normal(128, 40, (32, 32, 3))
    px[..., 0] += shift if high else -shift
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(path)


def _folder(
    folder: Path, rows: list[dict], rng: np.random.Generator, shift: float, image_high: list[bool] | None = None
) -> Path:
    """PNGs + index.jsonl in the sampler's layout (id = patch id); `image_high` paints other levels than the
    captions say."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "index.jsonl", "w") as f:
        for k, r in enumerate(rows):
            high = r["tumor_level"] == "high" if image_high is None else image_high[k]
            _image(folder / f"{r['patch_id']}.png", high, rng, shift)
            f.write(json.dumps({"id": r["patch_id"], "caption": r["caption"], "file": f"{r['patch_id']}.png"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six training and six held-out cases of four patches, levels drawn per patch; captions, split, extractor,
    real train / held-out folders (weak colour signal) and a generated set from training captions (strong signal)."""
    root = tmp_path_factory.mktemp("utility")
    rng = np.random.default_rng(0)
    rows = []
    for case in TRAIN_CASES + TEST_CASES:
        for t in range(4):
            tumor, til = ("high" if t % 2 else "low"), ("high" if rng.random() < 0.5 else "low")
            rows.append(
                {
                    "patch_id": f"{case}_{t}",
                    "case_id": case,
                    "caption": f"{tumor} tumor; {til} til; case {case}",
                    "tumor_level": tumor,
                    "til_level": til,
                }
            )
    pq.write_table(pa.Table.from_pylist(rows), root / "captions.parquet")
    (root / "split.json").write_text(json.dumps({"cases": {"train": TRAIN_CASES, "test": TEST_CASES}}))
    train = [r for r in rows if r["case_id"] in TRAIN_CASES]
    held = [r for r in rows if r["case_id"] in TEST_CASES]
    return {
        "root": root,
        "rows": rows,
        "train": train,
        "held": held,
        "extractor": save_pool_extractor(root / "pool.pt"),
        "train_real": _folder(root / "train-real", train, rng, 12.0),
        "real": _folder(root / "held-out", held, rng, 12.0),
        "fake": _folder(root / "fake", train, rng, 40.0),
        "fake_shuffled": _folder(
            root / "fake-shuffled",
            train,
            rng,
            40.0,
            image_high=list(rng.permutation([r["tumor_level"] == "high" for r in train])),
        ),
    }


def _cfg(world, out: Path, fake: Path | None = None, **kw) -> UtilityConfig:
    return UtilityConfig(
        real=world["real"],
        train_real=world["train_real"],
        fake=fake or world["fake"],
        captions=world["root"] / "captions.parquet",
        split=world["root"] / "split.json",
        out=out,
        extractor=world["extractor"],
        workers=0,
        attributes=["tumor"],
        bootstrap=200,
        **kw,
    )


def _row(metrics: dict, condition: str, attr: str = "tumor") -> dict:
    return next(r for r in metrics["utility"]["by_attribute"][attr]["conditions"] if r["condition"] == condition)


def test_probe_is_deterministic_and_separates_a_signal():
    rng = np.random.default_rng(1)
    y = np.arange(60) % 2 == 0
    x = rng.normal(0, 1, (60, 30))
    x[:, 3] += 3.0 * y
    a, b = fit_probe(x, y), fit_probe(x.copy(), y.copy())
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=0, atol=1e-12)
    test = rng.normal(0, 1, (40, 30))
    ty = np.arange(40) % 2 == 0
    test[:, 3] += 3.0 * ty
    score = bootstrap_scores(a.predict(test), ty, [f"c{i // 4}" for i in range(40)], 300, 0)
    assert score["auroc"] > 0.8 and score["auroc_ci"][0] < score["auroc"] < score["auroc_ci"][1]
    assert score == bootstrap_scores(
        b.predict(test), ty, [f"c{i // 4}" for i in range(40)], 300, 0
    )  # same seed, same interval


def test_bootstrap_auroc_equals_the_rank_auroc():
    from histoldm.evaluate.adherence import auroc

    rng = np.random.default_rng(2)
    prob, y = rng.random(50), rng.random(50) < 0.4
    prob[:5] = prob[5:10]  # ties count half in both
    assert bootstrap_scores(prob, y, ["a"] * 50, 10, 0)["auroc"] == pytest.approx(auroc(prob, y), abs=1e-12)


def test_tstr_is_near_one_when_synthetic_images_carry_the_label(world, tmp_path):
    m = run_utility(
        _cfg(world, tmp_path / "u", held_out_groups={"first three": "^H[012]$", "last three": "^H[345]$"})
    ).metrics
    tstr = _row(m, "synthetic only (TSTR)")["by_group"]["all"]
    assert len(tstr["seeds"]) == 2 and all(s["auroc"] > 0.95 and s["balanced_accuracy"] > 0.8 for s in tstr["seeds"])
    assert _row(m, "real")["by_group"]["all"]["auroc_mean"] > 0.7  # the weak real signal is found too
    curve = [r for r in m["utility"]["by_attribute"]["tumor"]["conditions"] if r["real_fraction"] == 0.1]
    assert {r["synthetic"] for r in curve} == {False, True} and all(
        r["n_real"] == 2 for r in curve
    )  # one patch per level at 10% of 24
    assert (
        "linear probe" in m["utility"]["protocol_line"]
        and "bootstrap over held-out cases" in m["utility"]["protocol_line"]
    )
    assert m["utility"]["protocol"]["extractor_sha256"] and m["utility"]["protocol"]["n_fake"] == 24
    assert json.loads((tmp_path / "u" / "metrics.json").read_text()) == m
    assert (tmp_path / "u" / "utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    held = m["utility"]["by_attribute"]["tumor"]["held_out"]  # held-out groups scored beside 'all'
    assert (
        held["all"]["n"] == 24
        and held["first three"]["n"] == held["last three"]["n"] == 12
        and held["first three"]["n_cases"] == 3
    )
    assert set(_row(m, "real")["by_group"]) == {"all", "first three", "last three"}


def test_tstr_is_chance_when_synthetic_labels_are_shuffled(world, tmp_path):
    m = run_utility(_cfg(world, tmp_path / "u", fake=world["fake_shuffled"])).metrics
    for s in _row(m, "synthetic only (TSTR)")["by_group"]["all"]["seeds"]:
        assert s["auroc_ci"][0] <= 0.5 <= s["auroc_ci"][1] and abs(s["auroc"] - 0.5) < 0.3


def test_synthetic_images_from_held_out_captions_are_refused(world, tmp_path, capsys):
    leaked = _folder(tmp_path / "leaked", world["train"][:10] + world["held"][:1], np.random.default_rng(3), 40.0)
    args = [
        "utility",
        "--real",
        str(world["real"]),
        "--train-real",
        str(world["train_real"]),
        "--fake",
        str(leaked),
        "--captions",
        str(world["root"] / "captions.parquet"),
        "--split",
        str(world["root"] / "split.json"),
        "--out",
        str(tmp_path / "u"),
        "--extractor",
        str(world["extractor"]),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(leaked) in err and "H0_0" in err and "'train' cases only" in err
    assert not (tmp_path / "u").exists()  # refused before anything is written
    # held-out real patches from a training case are refused too: the generator saw them
    with pytest.raises(Exception, match="the generator saw it"):
        run_utility(_cfg(world, tmp_path / "v").model_copy(update={"real": world["train_real"]}))


def test_demo_data_holds_out_real_tissue_blocks_apart_from_training(tmp_path):
    """The CC0 slide's held-out blocks are test cases of real tissue; no training patch shares a pixel with them."""
    from histoldm.data.splits import load_split
    from histoldm.experiments.demo_data import SLIDE_GROUP, DemoDataConfig, build_demo_data

    data = build_demo_data(tmp_path / "data", DemoDataConfig(synthetic_cases=2, tiles_per_case=1))
    split = load_split(data["split"])
    rows = pq.read_table(data["store"] / "patches.parquet").to_pylist()
    slide = [r for r in rows if r["case_id"].startswith("cmu_small_region-block-")]
    held = [r for r in slide if split[r["case_id"]] == "test"]
    train = [r for r in slide if split[r["case_id"]] == "train"]
    assert (
        len({r["case_id"] for r in held}) >= 3 and len(held) >= 10 and len(train) >= 40
    )  # several real held-out cases, most tissue trains
    assert {c for c, s in split.items() if s == "test"} >= {r["case_id"] for r in held} and any(
        c.startswith("SYN-") for c, s in split.items() if s == "test"
    )

    def overlap(a, b):
        return (
            a["x"] < b["x"] + b["extent"]
            and b["x"] < a["x"] + a["extent"]
            and a["y"] < b["y"] + b["extent"]
            and b["y"] < a["y"] + a["extent"]
        )

    assert not any(overlap(t, h) for t in train for h in held)
    tiled = pq.read_table(tmp_path / "data" / "store-slide" / "patches.parquet").num_rows
    blocks = json.loads(data["blocks"].read_text())
    assert len(slide) + len(blocks["dropped_overlapping_held_out"]) == tiled  # only the overlapping tiles are left out
    assert "not independent patients" in blocks["note"] and "not independent patients" in data["split"].read_text()
    import re

    assert all(re.search(SLIDE_GROUP, r["case_id"]) for r in slide) and not any(
        re.search(SLIDE_GROUP, r["case_id"]) for r in rows if r not in slide
    )


def test_held_out_features_given_by_the_caller_are_used_for_exactly_those_files(world, tmp_path):
    """The demo hands over the evaluation's held-out features: used when their files are the index's."""
    from histoldm.evaluate.features import FeatureSet

    files = [world["real"] / f"{r['patch_id']}.png" for r in world["held"]]
    flat = FeatureSet(
        np.zeros((len(files), 48)), files, [], "png"
    )  # every held-out image alike: no probe can rank them
    m = run_utility(_cfg(world, tmp_path / "u"), held_out_features=flat).metrics
    assert all(
        s["auroc"] == 0.5
        for r in m["utility"]["by_attribute"]["tumor"]["conditions"]
        for s in r["by_group"]["all"]["seeds"]
    )


def test_a_group_whose_resamples_all_hold_one_level_reports_no_interval():
    from histoldm.evaluate.utility import table_rows, utility_lines

    s = bootstrap_scores(np.array([0.9, 0.1]), np.array([True, False]), ["a", "b"], 20, 0)  # one level per case
    assert s["auroc"] == 1.0 and s["bootstrap_used"] < 20  # resamples of one case are left out
    s = {**s, "auroc_ci": None, "balanced_accuracy_ci": None}  # as when no resample holds both levels
    utility = {
        "protocol_line": "p",
        "by_attribute": {
            "tumor": {
                "conditions": [
                    {"condition": "real", "n_real": 2, "n_synthetic": 0, "by_group": {"all": {"seeds": [s]}}}
                ]
            }
        },
    }
    assert "[n/a]" in table_rows(utility, "all")[0][3] and "[n/a]" in utility_lines(utility)[1]

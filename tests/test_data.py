"""Data stages on real inputs: the bundled CC0 slide via OpenSlide, PathLDM-layout files, synthetic tiles."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import openslide
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from histoldm.assets import asset_path
from histoldm.cli import main
from histoldm.data.captions import fill_template, run_captions
from histoldm.data.config import CaptionsConfig, ScoresConfig, SplitConfig, TileConfig
from histoldm.data.descriptors import compose, deconvolve, describe
from histoldm.data.pathldm_import import import_folder, import_pathldm, read_npz_safely
from histoldm.data.scores import levels_of, run_scores
from histoldm.data.splits import load_split, run_split
from histoldm.data.store import PatchStore, case_id_of
from histoldm.data.synthetic import make_synthetic_dataset, render_tile
from histoldm.data.tiling import TileResult, run_tile
from histoldm.data.tissue import tissue_fraction, tissue_threshold
from histoldm.errors import UserError

SLIDE = asset_path("cmu_slide")


@pytest.fixture(scope="module")
def cmu_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TileResult]:
    out = tmp_path_factory.mktemp("cmu") / "store"
    result = run_tile(TileConfig(slides=SLIDE, out=out, magnification=10, size=256, overlap=32, min_tissue=0.5))
    return out, result


def test_tiling_physical_size_tissue_and_manifest_roundtrip(cmu_store: tuple[Path, TileResult]) -> None:
    out, result = cmu_store
    assert result.patches >= 4 and not result.skipped
    store = PatchStore.open(out)
    rows = store.table.to_pylist()
    base_mpp = float(openslide.OpenSlide(str(SLIDE)).properties["openslide.mpp-x"])
    with openslide.OpenSlide(str(SLIDE)) as s:
        threshold = tissue_threshold(s.get_thumbnail((2048, 2048)).convert("RGB"))
    for r in rows:
        assert r["mpp"] == pytest.approx(1.0)  # 10x
        assert r["mpp"] * 256 == pytest.approx(r["extent"] * base_mpp, rel=1e-6)  # 256 um on the slide
        img = store.image(r["patch_id"])
        assert img.size == (256, 256)
        # no background-only patch: the patch's own pixels are mostly tissue
        assert tissue_fraction(np.asarray(img), threshold) >= 0.5
        assert r["tissue_fraction"] >= 0.5 and r["case_id"] == "cmu_small_region"
    # the manifest round-trips: what was written is what the reader returns
    assert pq.read_table(out / "patches.parquet").to_pylist() == rows
    assert len(store.paths) == len(rows) and all(p.is_file() for p in store.paths)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["produced"]["patches"] == len(rows) and manifest["skipped"] == []
    # overlap: neighbouring x positions are (256 - 32) target pixels apart
    xs = sorted({r["x"] for r in rows})
    assert any(abs((b - a) - 224 * 1.0 / base_mpp) < 1.5 for a, b in zip(xs, xs[1:]))


def test_tiling_resumes_per_slide(cmu_store: tuple[Path, TileResult]) -> None:
    out, first = cmu_store
    again = run_tile(TileConfig(slides=SLIDE, out=out, overlap=32))
    assert again.slides_resumed == 1 and again.patches == first.patches
    # resuming keeps finished slides as they are, so other settings must not resume into this store
    with pytest.raises(UserError, match=r"other settings \(magnification 10.0 -> 20.0, size 256 -> 128\)"):
        run_tile(TileConfig(slides=SLIDE, out=out, overlap=32, magnification=20, size=128))


def test_slide_resolution_tolerance_and_same_named_slides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a slide stated 2% coarser than 20x (as scanners do) tiles at its own resolution, recorded as such
    r = run_tile(TileConfig(slides=SLIDE, out=tmp_path / "near", magnification=20, mpp=0.51, size=256, overlap=0))
    rows = PatchStore.open(tmp_path / "near").table.to_pylist()
    assert r.patches >= 1 and all(x["mpp"] == 0.51 and x["extent"] == 256 for x in rows)
    with pytest.raises(UserError, match="finest level is 0.600 um/px"):  # the only slide: nothing tiled is an error
        run_tile(TileConfig(slides=SLIDE, out=tmp_path / "far", magnification=20, mpp=0.6, size=256))
    # two files with one name in different folders would share a slide id: refused before any work
    for sub in ("a", "b"):
        (tmp_path / "two" / sub).mkdir(parents=True)
        shutil.copy(SLIDE, tmp_path / "two" / sub / "TCGA-AA-0001.svs")
    assert main(["tile", str(tmp_path / "two"), "--out", str(tmp_path / "s2")]) == 2
    assert "same slide id 'TCGA-AA-0001.svs'" in capsys.readouterr().err


def test_bad_slides_are_reported_and_skipped(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(SLIDE, slides / "TCGA-AB-1234-01Z-00-DX1.svs")
    (slides / "truncated.svs").write_bytes(SLIDE.read_bytes()[:60_000])
    with openslide.OpenSlide(str(SLIDE)) as s:  # real tissue, saved as a plain TIFF without metadata
        s.read_region((600, 900), 0, (1100, 1100)).convert("RGB").save(slides / "plain.tif")
    result = main(["tile", str(slides), "--out", str(tmp_path / "store"), "--size", "128", "--workers", "2"])
    assert result == 0
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    reasons = {Path(s["slide"]).name: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"truncated.svs", "plain.tif"}
    assert "no magnification metadata" in reasons["plain.tif"] and "--mpp" in reasons["plain.tif"]
    assert "truncated.svs: OpenSlide cannot read this .svs slide: truncated or corrupt file" in reasons["truncated.svs"]
    store = PatchStore.open(tmp_path / "store")
    assert set(store.table.column("case_id").to_pylist()) == {"TCGA-AB-1234"}
    # with --mpp the plain TIFF tiles: 0.5 um/px at 10x is a downsample of 2
    r = run_tile(TileConfig(slides=slides / "plain.tif", out=tmp_path / "plain", mpp=0.5, size=128, min_tissue=0.3))
    assert r.patches >= 1 and all(
        e == 256 for e in PatchStore.open(tmp_path / "plain").table.column("extent").to_pylist()
    )


def test_tile_shards_fill_one_store_equal_to_a_single_job(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import openslide

    slides = tmp_path / "slides"
    slides.mkdir()
    with openslide.OpenSlide(str(SLIDE)) as s:  # three small real-tissue TIFFs (tiled with --mpp)
        for i, (x, y) in enumerate([(600, 900), (1200, 900), (600, 1500)]):
            s.read_region((x, y), 0, (600, 600)).convert("RGB").save(slides / f"slide{i}.tif")
    common = ["--mpp", "0.5", "--size", "64", "--set", "min_tissue=0.3"]
    assert main(["tile", str(slides), "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["tile", str(slides), "--out", str(tmp_path / "sharded"), "--shard", "1/2", *common]) == 0
    first = PatchStore.open(tmp_path / "sharded").table
    assert set(first.column("slide_id").to_pylist()) == {"slide1"}  # 1/2 takes the second of the sorted list
    assert "2 slides of other shards not finished yet" in capsys.readouterr().out
    assert main(["tile", str(slides), "--out", str(tmp_path / "sharded"), "--shard", "0/2", *common]) == 0
    one, sharded = PatchStore.open(tmp_path / "one").table, PatchStore.open(tmp_path / "sharded").table
    assert one.num_rows > first.num_rows and sharded.equals(
        one
    )  # the last job leaves the whole store, in one job's order
    for rel in one.column("path").to_pylist():
        assert (tmp_path / "sharded" / rel).read_bytes() == (tmp_path / "one" / rel).read_bytes()
    assert main(["tile", str(slides), "--out", str(tmp_path / "x"), "--shard", "2/2"]) == 2
    assert "--shard 2/2: expected K/N with 0 <= K < N" in capsys.readouterr().err


def test_a_shard_whose_slides_all_fail_still_completes_the_store(tmp_path: Path) -> None:
    """Job 1/2 holds only a corrupt slide: the slides job 0/2 tiled are still written, not an exit 2."""
    import openslide

    slides = tmp_path / "slides"
    slides.mkdir()
    with openslide.OpenSlide(str(SLIDE)) as s:
        for name, (x, y) in (("a.tif", (600, 900)), ("c.tif", (1200, 900))):
            s.read_region((x, y), 0, (600, 600)).convert("RGB").save(slides / name)
    (slides / "b.tif").write_bytes(b"II*\x00" + bytes(200))  # sorted second: shard 1/2's only slide
    common = ["--mpp", "0.5", "--size", "64", "--set", "min_tissue=0.3"]
    assert main(["tile", str(slides), "--out", str(tmp_path / "s"), "--shard", "0/2", *common]) == 0
    assert main(["tile", str(slides), "--out", str(tmp_path / "s"), "--shard", "1/2", *common]) == 0
    assert set(PatchStore.open(tmp_path / "s").table.column("slide_id").to_pylist()) == {"a", "c"}
    skipped = json.loads((tmp_path / "s" / "manifest.json").read_text())["skipped"]
    assert [Path(x["slide"]).name for x in skipped] == ["b.tif"]


def test_missing_magnification_source_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["tile", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert "slide file or folder not found" in capsys.readouterr().err


def test_levels_rule() -> None:
    assert levels_of(0.49) == "low" and levels_of(0.5) == "high" and levels_of(1.0) == "high"
    assert levels_of(None) is None and levels_of(float("nan")) is None
    three = ["low", "mid", "high"]
    assert [levels_of(p, three) for p in (0.0, 0.34, 0.67, 1.0)] == ["low", "mid", "high", "high"]
    assert levels_of(0.99, ["a", "b", "c", "d"]) == "d"


def test_scores_csv_unknown_slides_skipped_and_heatmaps(cmu_store: tuple[Path, TileResult], tmp_path: Path) -> None:
    out, _ = cmu_store
    rows = PatchStore.open(out).table.to_pylist()
    csv_path = tmp_path / "scores.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "x", "y", "prob_tumor", "prob_til"])
        w.writerow([rows[0]["slide_id"], rows[0]["x"], rows[0]["y"], 0.9, ""])
        w.writerow(["no-such-slide", 0, 0, 0.1, 0.1])
    r = run_scores(ScoresConfig(store=out, csv=csv_path, out=tmp_path / "s.parquet"))
    assert r.scored == 1 and r.skipped[0]["reason"] == "unknown slide"
    t = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert len(t) == len(rows) and t[0]["prob_tumor"] == 0.9 and t[0]["prob_til"] is None
    manifest = json.loads((tmp_path / "s.parquet.manifest.json").read_text())
    assert manifest["skipped"][0]["slide_id"] == "no-such-slide"

    # heat map: 100-px cells; a patch gets the mean of the cells it overlaps
    grid = np.arange(30 * 23, dtype=np.float64).reshape(30, 23) / (30 * 23)
    (tmp_path / "hm").mkdir()
    np.savez(tmp_path / "hm" / f"{rows[0]['slide_id']}.npz", prob_tumor=grid, stride=np.float64(100))
    r = run_scores(ScoresConfig(store=out, heatmaps=tmp_path / "hm", out=tmp_path / "h.parquet"))
    got = {p["patch_id"]: p for p in pq.read_table(tmp_path / "h.parquet").to_pylist()}
    r0 = rows[0]
    y0, x0 = r0["y"] // 100, r0["x"] // 100
    y1, x1 = int(np.ceil((r0["y"] + r0["extent"]) / 100)), int(np.ceil((r0["x"] + r0["extent"]) / 100))
    assert got[r0["patch_id"]]["prob_tumor"] == pytest.approx(grid[y0:y1, x0:x1].mean())
    assert got[r0["patch_id"]]["prob_til"] is None
    with pytest.raises(ValidationError, match="exactly one score source"):
        ScoresConfig(store=out)


def test_scores_out_of_range_or_keyless_rows_are_skipped_with_reasons(
    cmu_store: tuple[Path, TileResult], tmp_path: Path
) -> None:
    out, _ = cmu_store
    first, second = PatchStore.open(out).patch_ids[:2]
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(f"patch_id,prob_tumor,prob_til\n{first},150,0.3\n,0.2,0.2\n{second},0.7,high\n")
    r = run_scores(ScoresConfig(store=out, csv=csv_path, out=tmp_path / "s.parquet"))
    reasons = [s["reason"] for s in r.skipped]
    assert (
        r.scored == 2 and "outside [0, 1]" in reasons[0] and "unreadable row" in reasons[1] and "'high'" in reasons[2]
    )
    got = {row["patch_id"]: row for row in pq.read_table(tmp_path / "s.parquet").to_pylist()}
    # each column on its own: the bad prob_tumor of the first row keeps its prob_til, and the other way round
    assert got[first]["prob_tumor"] is None and got[first]["prob_til"] == pytest.approx(0.3)
    assert got[second]["prob_tumor"] == pytest.approx(0.7) and got[second]["prob_til"] is None
    assert levels_of(1.0000001) == "high"  # float rounding of a mean just above 1 is clamped, not refused


def _percent_csv(store: Path, path: Path) -> Path:
    """Scores as a classifier's spreadsheet export may write them: percentages, one tumour value per patch."""
    ids = PatchStore.open(store).patch_ids
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patch_id", "prob_tumor", "prob_til"])
        for i, pid in enumerate(ids):
            w.writerow([pid, 90 if i % 2 else 10, 0.8 if i % 3 == 0 else 0.2])  # prob_til is a probability
    return path


def test_scores_in_percent_are_refused_and_the_good_output_is_kept(
    cmu_store: tuple[Path, TileResult], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = cmu_store
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "scores.parquet"
    assert main(["scores", str(out), "--proxy", "--out", str(good)]) == 0
    before = good.read_bytes()
    _percent_csv(out, tmp_path / "pct.csv")
    capsys.readouterr()
    assert main(["scores", str(out), "--csv", "pct.csv", "--out", str(good)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("histoldm scores: error: pct.csv: prob_tumor looks like percentages")
        and "--percent" in err
    )
    assert good.read_bytes() == before

    # --percent: the percentage column divided by 100, the probability column as it is (each judged on its own)
    assert main(["scores", str(out), "--csv", "pct.csv", "--percent", "--out", str(good)]) == 0
    rows = pq.read_table(good).to_pylist()
    assert [r["prob_tumor"] for r in rows] == pytest.approx([0.9 if i % 2 else 0.1 for i in range(len(rows))])
    assert all(r["prob_til"] is not None for r in rows)


def test_scores_that_score_nothing_never_replace_a_good_output(
    cmu_store: tuple[Path, TileResult], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, _ = cmu_store
    good = tmp_path / "scores.parquet"
    assert main(["scores", str(out), "--proxy", "--out", str(good)]) == 0
    before = good.read_bytes()
    stale = tmp_path / "other-store.csv"  # the CSV of another store: no patch id matches
    stale.write_text("patch_id,prob_tumor\nelsewhere-1,0.4\nelsewhere-2,0.6\n")
    capsys.readouterr()
    assert main(["scores", str(out), "--csv", str(stale), "--out", str(good)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{stale}: no patch of {out} got a score (2 rows skipped; first: line 2: unknown patch_id)" in err
        and "not written" in err
    )
    assert good.read_bytes() == before


def test_deconvolution_inverts_composition() -> None:
    conc = np.random.default_rng(0).uniform(0, 0.8, (8, 8, 3)).astype(np.float32)
    conc[..., 2] = 0
    back = deconvolve(compose(conc))
    assert np.abs(back - conc).max() < 0.02


def test_synthetic_tiles_are_deterministic_and_attributes_measurable() -> None:
    assert np.array_equal(render_tile(0.8, 0.2, 0.1, 5), render_tile(0.8, 0.2, 0.1, 5))
    rng = np.random.default_rng(1)
    high = [
        describe(render_tile(rng.uniform(0.65, 1), rng.uniform(0, 1), rng.uniform(0, 0.4), i))["nuclear_density"]
        for i in range(8)
    ]
    low = [
        describe(render_tile(rng.uniform(0, 0.35), rng.uniform(0, 1), rng.uniform(0, 0.4), 100 + i))["nuclear_density"]
        for i in range(8)
    ]
    assert min(high) > max(low)
    til_hi = describe(render_tile(0.2, 0.9, 0.0, 7))["lymphocytes"]
    til_lo = describe(render_tile(0.2, 0.1, 0.0, 7))["lymphocytes"]
    assert til_hi > 3 * til_lo
    assert (
        describe(render_tile(0.2, 0.2, 0.35, 8))["fat_fraction"]
        > 0.25
        > describe(render_tile(0.2, 0.2, 0.0, 8))["fat_fraction"]
    )


def test_synthetic_tiles_same_as_dilating_the_whole_tile(monkeypatch) -> None:
    """The bounding-box dilation paints exactly the pixels the whole-tile dilation did, edges included."""
    from scipy import ndimage

    from histoldm.data import synthetic

    tiles = [render_tile(0.9, 0.8, 0.1, (0, i)) for i in range(2)] + [render_tile(0.5, 0.5, 0.0, 3, size=64)]

    def whole_tile(occupied: np.ndarray, mask: np.ndarray) -> None:
        np.logical_or(occupied, ndimage.binary_dilation(mask), out=occupied)

    monkeypatch.setattr(synthetic, "_dilate_into", whole_tile)
    before = [render_tile(0.9, 0.8, 0.1, (0, i)) for i in range(2)] + [render_tile(0.5, 0.5, 0.0, 3, size=64)]
    assert all(np.array_equal(a, b) for a, b in zip(tiles, before, strict=True))


def test_synthetic_tiles_rendered_in_processes_are_the_same_files(tmp_path: Path) -> None:
    one = make_synthetic_dataset(tmp_path / "one", n_cases=2, tiles_per_case=3, seed=0, size=64)
    two = make_synthetic_dataset(tmp_path / "two", n_cases=2, tiles_per_case=3, seed=0, size=64, workers=2)
    assert one["patches"] == two["patches"] == 6
    for table in ("patches.parquet", "scores.parquet", "attributes.parquet"):
        assert pq.read_table(tmp_path / "one" / table).equals(pq.read_table(tmp_path / "two" / table))
    pngs = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(pngs) == 6 and all(
        (tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes() for p in pngs
    )


def test_synthetic_dataset_proxy_scores_captions(tmp_path: Path) -> None:
    store = tmp_path / "syn"
    r = make_synthetic_dataset(store, n_cases=3, tiles_per_case=4, seed=0, size=256)
    assert r["patches"] == 12
    attrs = {a["patch_id"]: a for a in pq.read_table(store / "attributes.parquet").to_pylist()}
    proxy = run_scores(ScoresConfig(store=store, proxy=True, out=tmp_path / "proxy.parquet"))
    assert proxy.method == "proxy-heuristic"
    for row in pq.read_table(tmp_path / "proxy.parquet").to_pylist():
        assert levels_of(row["prob_tumor"]) == attrs[row["patch_id"]]["tumor"]
    summaries = tmp_path / "summaries.jsonl"
    summaries.write_text(
        json.dumps({"case_id": "SYN-0000", "summary": "Invasive ductal carcinoma.", "status": "ok"})
        + "\n"
        + json.dumps({"case_id": "SYN-0001", "summary": "", "status": "failed"})
        + "\n"
    )
    c = run_captions(CaptionsConfig(store=store, summaries=summaries))
    assert c.patches_without_summary == 8 and c.cases_without_summary == ["SYN-0001", "SYN-0002"]
    caps = {x["patch_id"]: x for x in pq.read_table(store / "captions.parquet").to_pylist()}
    for pid, a in attrs.items():
        expected = f"{a['tumor']} tumor; {a['til']} til"
        if a["case_id"] == "SYN-0000":
            expected += "; Invasive ductal carcinoma."
        assert caps[pid]["caption"] == expected and caps[pid]["tumor_level"] == a["tumor"]
    assert c.unique_captions == len({x["caption"] for x in caps.values()})
    d = run_captions(CaptionsConfig(store=store, template="{nuclei} nuclei; {fat} fat", out=tmp_path / "d.parquet"))
    assert d.unique_captions >= 2

    # the test split's real patches as a folder for fid-ref / evaluate --real, at the model's resolution
    (tmp_path / "split.json").write_text(
        json.dumps({"cases": {"train": ["SYN-0000", "SYN-0001"], "test": ["SYN-0002"]}})
    )
    assert (
        main(
            [
                "export-patches",
                str(store),
                "--captions",
                str(store / "captions.parquet"),
                "--split",
                str(tmp_path / "split.json"),
                "--out",
                str(tmp_path / "real"),
                "--size",
                "64",
                "--n",
                "3",
            ]
        )
        == 0
    )
    index = [json.loads(line) for line in (tmp_path / "real" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 3 and all(
        caps[r["id"]]["case_id"] == "SYN-0002" and r["caption"] == caps[r["id"]]["caption"] for r in index
    )
    assert all(Image.open(tmp_path / "real" / r["file"]).size == (64, 64) for r in index)
    (tmp_path / "a_file").write_text("x")  # an --out that is a file: one line naming it, before any patch is read
    assert (
        main(
            [
                "export-patches",
                str(store),
                "--captions",
                str(store / "captions.parquet"),
                "--split",
                str(tmp_path / "split.json"),
                "--out",
                str(tmp_path / "a_file"),
            ]
        )
        == 2
    )


def test_fill_template_drops_parts_with_missing_values() -> None:
    t = "{tumor} tumor; {til} til; {summary}"
    assert fill_template(t, {"tumor": "high", "til": None, "summary": "IDC."}) == "high tumor; IDC."
    assert fill_template(t, {"tumor": None, "til": None, "summary": None}) == ""
    with pytest.raises(ValidationError, match="unknown placeholders"):
        CaptionsConfig(store=Path("."), template="{grade}")
    with pytest.raises(ValidationError, match="2, 3 or 4"):
        CaptionsConfig(store=Path("."), levels=["only"])


def test_split_is_patient_level_seeded_and_byte_identical(tmp_path: Path) -> None:
    cases = tmp_path / "cases.csv"
    rng = np.random.default_rng(0)
    with open(cases, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "subtype"])
        for i in range(1000):
            w.writerow([f"SYN-{i:04d}", rng.choice(["LumA", "LumB", "Basal", "Her2"])])
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for out, seed in ((a, 7), (b, 7), (c, 8)):
        run_split(SplitConfig(cases=cases, out=out, seed=seed, stratify_by="subtype"))
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    doc = json.loads(a.read_text())
    assert doc["seed"] == 7 and doc["method"] == "patient-stratified-v1" and doc["stratify_by"] == "subtype"
    groups = [set(v) for v in doc["cases"].values()]
    assert sum(len(g) for g in groups) == 1000 == len(set().union(*groups))
    assert len(doc["cases"]["train"]) == pytest.approx(800, abs=4)
    assert len(load_split(a)) == 1000
    # import a given split, and refuse one with a case in two splits
    given = tmp_path / "given.csv"
    given.write_text("case_id,split\nA,train\nB,test\n")
    run_split(SplitConfig(given=given, out=tmp_path / "g.json"))
    assert load_split(tmp_path / "g.json") == {"A": "train", "B": "test"}
    given.write_text("case_id,split\nA,train\nA,test\n")
    with pytest.raises(UserError, match="case A is in both"):
        run_split(SplitConfig(given=given, out=tmp_path / "g2.json"))


def _jpeg(rgb: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def test_pathldm_hdf5_npz_import(tmp_path: Path) -> None:
    wsis = ["TCGA-A1-0001-01Z-00-DX1.abc", "TCGA-A1-0001-01Z-00-DX2.def", "TCGA-B2-0002-01Z-00-DX1.ghi"]
    folders = ["14_9632_0", "14_9632_1", "3_448_0", "7_0_0"]
    rows = [(w, f) for w in wsis for f in folders]
    h5 = tmp_path / "data.h5"
    with h5py.File(h5, "w") as f:
        x = f.create_dataset("X", (len(rows),), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(len(rows)):
            x[i] = _jpeg(render_tile(0.5, 0.5, 0.1, i, size=64))
        x[5] = np.frombuffer(b"not a jpeg", dtype=np.uint8)  # a corrupt row: skipped, the rest continues
        f["wsi"] = np.array([w.encode() for w, _ in rows])
        f["folder_name"] = np.array([fo.encode() for _, fo in rows])
    prob = {w: {fo: (0.8 if k % 2 else 0.2) for k, fo in enumerate(folders)} for w in wsis}
    np.savez(
        tmp_path / "train.npz",
        indices=np.arange(0, 8),
        summaries={wsis[0]: "IDC grade 2.", wsis[1]: "IDC grade 2."},
        prob_tumor=prob,
        prob_til=prob,
    )
    np.savez(
        tmp_path / "test.npz",
        indices=np.arange(8, 12),
        summaries={wsis[2]: ["Lobular carcinoma.", "ILC."]},
        prob_tumor=prob,
        prob_til={},
    )
    r = import_pathldm(h5, tmp_path / "store", [tmp_path / "train.npz", tmp_path / "test.npz"])
    assert r["patches"] == 11 and r["skipped"][0]["index"] == 5
    store = PatchStore.open(tmp_path / "store")
    assert store.image(store.patch_ids[0]).size == (64, 64)
    assert set(store.table.column("case_id").to_pylist()) == {"TCGA-A1-0001", "TCGA-B2-0002"}
    assert load_split(tmp_path / "store" / "split.json") == {"TCGA-A1-0001": "train", "TCGA-B2-0002": "test"}
    scores = {s["patch_id"]: s for s in pq.read_table(tmp_path / "store" / "scores.parquet").to_pylist()}
    test_pid = f"{wsis[2]}_14_9632_1"
    assert scores[test_pid]["prob_tumor"] == 0.8 and scores[test_pid]["prob_til"] is None
    summ = [json.loads(line) for line in (tmp_path / "store" / "summaries.jsonl").read_text().splitlines()]
    assert [s["case_id"] for s in summ] == ["TCGA-A1-0001", "TCGA-B2-0002"]
    assert summ[1]["summary"] == "Lobular carcinoma." and summ[1]["variants"] == ["Lobular carcinoma.", "ILC."]
    assert all(s["backend"] == "pathldm-import" and s["status"] == "ok" and s["tokens"] > 0 for s in summ)
    c = run_captions(CaptionsConfig(store=tmp_path / "store", summaries=tmp_path / "store" / "summaries.jsonl"))
    assert c.patches_without_summary == 0

    # Interrupted before the tables, one PNG missing and one cut short: a re-run keeps the complete
    # PNGs and remakes the others.
    pngs = sorted((tmp_path / "store").rglob("*.png"))
    lost, cut, untouched = pngs[0], pngs[1], pngs[2]
    lost_bytes, cut_bytes, untouched_inode = lost.read_bytes(), cut.read_bytes(), untouched.stat().st_ino
    lost.unlink()
    cut.write_bytes(cut_bytes[: len(cut_bytes) // 2])
    (tmp_path / "store" / "patches.parquet").unlink()
    again = import_pathldm(h5, tmp_path / "store", [tmp_path / "train.npz", tmp_path / "test.npz"])
    assert again["patches"] == 11 and again["kept_from_earlier_run"] == 9
    assert (
        lost.read_bytes() == lost_bytes and cut.read_bytes() == cut_bytes and untouched.stat().st_ino == untouched_inode
    )
    assert PatchStore.open(tmp_path / "store").patch_ids == store.patch_ids
    with pytest.raises(UserError, match=r"other inputs \(mpp 1.0 -> 0.5\)"):
        import_pathldm(h5, tmp_path / "store", [tmp_path / "train.npz", tmp_path / "test.npz"], mpp=0.5)
    (tmp_path / "p.csv").write_text("path\nx.png\n")
    with pytest.raises(UserError, match="kind pathldm -> folder"):  # another kind of import into this store
        import_folder(tmp_path, tmp_path / "p.csv", tmp_path / "store")


def test_pathldm_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    h5 = tmp_path / "nox.h5"
    with h5py.File(h5, "w") as f:
        f["wsi"] = np.array([b"a"])
    assert main(["import", "pathldm", str(h5), "--out", str(tmp_path / "o")]) == 2
    assert "no dataset 'X'" in capsys.readouterr().err
    # the failed start recorded nothing: the fixed file imports into the same folder
    with h5py.File(h5, "w") as f:  # two rows whose ids collide once made file-safe: the second is skipped
        x = f.create_dataset("X", (2,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(2):
            x[i] = _jpeg(render_tile(0.5, 0.5, 0.1, i, size=32))
        f["wsi"] = np.array([b"S1", b"S1"])
        f["folder_name"] = np.array([b"a b", b"a_b"])
    r = import_pathldm(h5, tmp_path / "o")
    assert r["patches"] == 1 and r["skipped"][0]["index"] == 1 and "duplicate patch_id" in r["skipped"][0]["reason"]
    # npz dictionaries load without unpickling arbitrary classes
    evil = tmp_path / "evil.npz"
    np.savez(evil, indices=np.arange(2), summaries=np.array([Path("x")], dtype=object))
    with pytest.raises(UserError, match="refusing to load"):
        read_npz_safely(evil)


def test_folder_import(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(render_tile(0.5, 0.5, 0.0, i, size=32)).save(imgs / f"p{i}.jpg")
    (tmp_path / "p.csv").write_text(
        "path,slide_id,prob_tumor\np0.jpg,TCGA-AA-0001-01Z,0.7\np1.jpg,TCGA-AA-0001-01Z,\nmissing.jpg,S2,0.1\n"
    )
    r = import_folder(imgs, tmp_path / "p.csv", tmp_path / "store")
    assert r["patches"] == 2 and r["skipped"][0]["path"] == "missing.jpg"
    assert r["skipped"][0]["reason"].startswith("FileNotFoundError")
    assert PatchStore.open(tmp_path / "store").table.column("case_id").to_pylist() == ["TCGA-AA-0001"] * 2
    assert import_folder(imgs, tmp_path / "p.csv", tmp_path / "store")["kept_from_earlier_run"] == 2  # resumed
    with (tmp_path / "p.csv").open("a") as f:
        f.write("p2.jpg,S3,0.2\n")
    with pytest.raises(UserError, match="holds an import of other inputs"):
        import_folder(imgs, tmp_path / "p.csv", tmp_path / "store")


def test_case_id_of() -> None:
    assert case_id_of("TCGA-E2-A14N-01Z-00-DX1.8F2C3B1A") == "TCGA-E2-A14N"
    assert case_id_of("slide_7") == "slide_7"


def test_merge_stores_joins_tables_scores_and_images(tmp_path):
    from histoldm.data.store import PatchStore, merge_stores, write_patch_table
    from histoldm.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "a", n_cases=1, tiles_per_case=2, seed=0, size=64)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(UserError, match="already in another store"):
        merge_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "dup")
    make_synthetic_dataset(tmp_path / "c", n_cases=1, tiles_per_case=3, seed=0, size=64)
    table = pq.read_table(tmp_path / "c" / "patches.parquet").to_pylist()
    (tmp_path / "c" / "patches").rename(tmp_path / "c" / "c-patches")
    for row in table:  # give c's patches their own ids, case and image paths
        row["patch_id"], row["case_id"], row["path"] = "c-" + row["patch_id"], "CASE-C", "c-" + row["path"]
    write_patch_table(tmp_path / "c", table)
    (tmp_path / "c" / "scores.parquet").unlink()

    merged = merge_stores([tmp_path / "a", tmp_path / "c"], tmp_path / "m")
    assert len(merged) == 5 and all(p.is_file() for p in merged.paths)
    assert pq.read_table(tmp_path / "m" / "scores.parquet").num_rows == 2  # only a had scores
    assert PatchStore.open(tmp_path / "m").image(merged.patch_ids[0]).size == (64, 64)


def test_store_with_duplicate_patch_ids_is_refused(tmp_path: Path) -> None:
    """Two rows with one patch id would silently train, encode and sample one of them twice."""
    from histoldm.data.store import patch_table
    from histoldm.tables import write_parquet

    row = {
        "patch_id": "p0",
        "slide_id": "s",
        "case_id": "c",
        "x": 0,
        "y": 0,
        "level": 0,
        "mpp": 1.0,
        "tissue_fraction": 1.0,
        "path": "patches/s/p0.png",
    }
    write_parquet(tmp_path / "patches.parquet", patch_table([row, row]))
    with pytest.raises(UserError, match="duplicate patch_id"):
        PatchStore.open(tmp_path)


@pytest.mark.parametrize("keep", [0.9, 0.03])
def test_truncated_slides_are_named_and_nothing_tiled_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, keep: float
) -> None:
    """A copy of the CC0 slide cut short (as a failed download leaves it): 90% kept used to reach PIL and
    be blamed on missing metadata, 3% gave 'UnidentifiedImageError'; either way exit 0 with 0 patches."""
    slides = tmp_path / "slides"
    slides.mkdir()
    data = SLIDE.read_bytes()
    for name in ("TCGA-AA-0001-01Z-00-DX1.svs", "TCGA-AA-0002-01Z-00-DX1.svs"):
        (slides / name).write_bytes(data[: int(len(data) * keep)])
    assert main(["tile", str(slides), "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the lines above it are the progress bar
    assert "TCGA-AA-0001-01Z-00-DX1.svs" in err and "truncated or corrupt" in err and "1 more failed too" in err
    assert not (tmp_path / "store" / "patches.parquet").exists()


def test_a_tile_run_that_tiles_nothing_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No readable slide: no store folder and no tiling.json, so a retry with another --size is not refused
    as 'tiled with other settings' (the store holds no patch)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "TCGA-AA-0001-01Z-00-DX1.svs").write_bytes(SLIDE.read_bytes()[:60_000])  # a download cut short
    assert main(["tile", str(slides), "--out", str(tmp_path / "store"), "--size", "128"]) == 2
    assert not (tmp_path / "store").exists()
    shutil.copy(SLIDE, slides / "TCGA-AA-0001-01Z-00-DX1.svs")  # downloaded again
    capsys.readouterr()
    assert (
        main(["tile", str(slides), "--out", str(tmp_path / "store"), "--size", "256", "--set", "min_tissue=0.5"]) == 0
    )
    assert PatchStore.open(tmp_path / "store").image(PatchStore.open(tmp_path / "store").patch_ids[0]).size == (
        256,
        256,
    )


def test_split_and_captions_check_their_output_before_any_work(
    tmp_path: Path, cmu_store: tuple[Path, TileResult], capsys: pytest.CaptureFixture
) -> None:
    """An --out that cannot be written used to fail after the work, naming a `.split.json.*.tmp` file."""
    store, _ = cmu_store
    folder = tmp_path / "existing"
    folder.mkdir()
    (tmp_path / "a_file").write_text("x")
    for argv, typed in (
        (["split", "--store", str(store), "--out", str(folder)], folder),
        (
            ["split", "--store", str(store), "--out", str(tmp_path / "a_file" / "split.json")],
            tmp_path / "a_file" / "split.json",
        ),
        (["captions", str(store), "--out", str(folder)], folder),
        (["captions", str(store), "--out", str(tmp_path / "a_file" / "c.parquet")], tmp_path / "a_file" / "c.parquet"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"histoldm: {typed}: ") or f" {typed}: " in err, err
        assert ".tmp" not in err and ("is an existing folder" in err or "is a file)" in err), err
    assert list(folder.iterdir()) == []


def test_split_warns_of_an_empty_split_and_says_how_many_cases_it_needs(tmp_path: Path, capsys) -> None:
    """Three cases at 0.8/0.1/0.1 all land in train: said on stderr (and in the manifest) with the case count
    each empty split needs; a share that fits three cases gives no warning."""
    cases = tmp_path / "cases.csv"
    cases.write_text("case_id\nA\nB\nC\n")
    assert main(["split", "--cases", str(cases), "--out", str(tmp_path / "s.json")]) == 0
    out, err = capsys.readouterr()
    assert "test 0, train 3, val 0 cases" in out
    lines = err.strip().splitlines()
    assert lines == [
        "warning: split test has no case: 0.1 of 3 cases rounds to none; it gets one from 4 cases on "
        "(or give it a larger share with --fractions)",
        "warning: split val has no case: 0.1 of 3 cases rounds to none; it gets one from 7 cases on "
        "(or give it a larger share with --fractions)",
    ]
    assert len(json.loads((tmp_path / "s.json.manifest.json").read_text())["warnings"]) == 2
    for n, need in (
        (4, {"test": 1, "val": 0}),
        (7, {"test": 1, "val": 1}),
    ):  # the counts the warning names are the real ones
        split = run_split(SplitConfig(cases=_cases_csv(tmp_path, n), out=tmp_path / f"s{n}.json"))
        assert {k: v for k, v in split.counts.items() if k != "train"} == need
    assert (
        main(["split", "--cases", str(cases), "--out", str(tmp_path / "s2.json"), "--fractions", "train=0.8,test=0.2"])
        == 0
    )
    out, err = capsys.readouterr()
    assert "test 1, train 2 cases" in out and err == ""


def _cases_csv(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"cases{n}.csv"
    path.write_text("case_id\n" + "".join(f"C{i}\n" for i in range(n)))
    return path

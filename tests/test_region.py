"""sample-region and evaluate-region: determinism, resume after SIGKILL, blending against a seam,
the pyramidal TIFF through OpenSlide, bad maps, map agreement and the crop metric against evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import save_pool_extractor, write_random_pngs, write_tiny_bundle
from histoldm.cli import main
from histoldm.errors import UserError
from histoldm.evaluate.config import RegionEvalConfig
from histoldm.evaluate.region import border_positions, run_evaluate_region, seam_score
from histoldm.sampling.config import RegionConfig
from histoldm.sampling.region import blended_eps_fn, decode_tiled, window_grid
from histoldm.sampling.region_run import run_sample_region
from histoldm.sampling.region_tiff import pyramid_tiff_bytes, read_level0
from histoldm.sampling.solvers import make_solver, training_alphas_cumprod

STEPS = 3
MAP = (
    "high/low,low/low,low/high\nhigh/high,-/low,low/low\nhigh/low,high/high,low/low\n"  # 3x3 windows of a 64 px region
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared box: one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny bundle (tiny UNet on 8x8 latents, tiny f=4 KL autoencoder: 32 px windows)."""
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def label_map(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("map") / "map.csv"
    path.write_text(MAP, encoding="utf-8")
    return path


def _config(bundle: Path, label_map: Path, out: Path, **kw) -> RegionConfig:
    settings = {
        "checkpoint": bundle,
        "out": out,
        "size": 64,
        "label_map": label_map,
        "summary": "invasive ductal carcinoma",
        "steps": STEPS,
        "device": "cpu",
        "num_regions": 3,
    } | kw
    return RegionConfig(**settings)


@pytest.fixture(scope="module")
def reference(bundle, label_map, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "regions"
    run_sample_region(_config(bundle, label_map, out))
    return out


def _pixels(folder: Path, region_id: str) -> np.ndarray:
    return read_level0(folder / "regions" / f"{region_id}.tiff").astype(np.int16)


def _index(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]


def test_region_is_deterministic_per_seed_whatever_the_window_batch(bundle, label_map, reference, tmp_path):
    other = run_sample_region(_config(bundle, label_map, tmp_path / "b", batch_size=2, num_regions=2))
    assert other.n_new == 2
    for region_id in ("000001", "000002"):
        assert np.abs(_pixels(reference, region_id) - _pixels(tmp_path / "b", region_id)).max() <= 1
    first, second = _pixels(reference, "000001"), _pixels(reference, "000002")
    assert first.shape == (64, 64, 3) and first.std() > 1 and np.abs(first - second).mean() > 2  # ids seed differently
    run_sample_region(_config(bundle, label_map, tmp_path / "seed1", seed=1, num_regions=1))
    assert np.abs(_pixels(tmp_path / "seed1", "000001") - first).mean() > 2
    rec = _index(reference)[0]
    assert (
        rec["map"][1] == ["high/high", "-/low", "low/low"]
        and rec["size"] == 64
        and rec["window_px"] == 32
        and rec["stride_px"] == 16
    )
    assert rec["settings"]["steps"] == STEPS and rec["template"] == "{tumor} tumor; {til} til; {summary}"


def test_windows_follow_their_own_map_cell(bundle, label_map, tmp_path):
    """A map is not decoration: another cell changes the pixels under that window, most near its centre."""
    base = _pixels(_run_one(bundle, label_map, tmp_path / "a"), "000001")
    changed = tmp_path / "changed.csv"
    changed.write_text(
        MAP.replace("high/low,high/high,low/low", "high/low,high/high,high/high"), encoding="utf-8"
    )  # cell (2, 2)
    moved = _pixels(_run_one(bundle, changed, tmp_path / "b"), "000001")
    diff = np.abs(base - moved).mean(axis=2)
    assert diff[40:, 40:].mean() > 4 * diff[:24, :24].mean()


def _run_one(bundle, label_map, out) -> Path:
    run_sample_region(_config(bundle, label_map, out, num_regions=1))
    return out


def test_resume_after_sigkill_finishes_to_the_same_regions(bundle, label_map, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "histoldm.cli",
        "sample-region",
        "--checkpoint",
        str(bundle),
        "--out",
        str(out),
        "--size",
        "64",
        "--label-map",
        str(label_map),
        "--summary",
        "invasive ductal carcinoma",
        "--steps",
        str(STEPS),
        "--device",
        "cpu",
        "--num-regions",
        "3",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
            (out / "index.jsonl").is_file() and (out / "index.jsonl").read_text().strip()
        ):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    before = len(_index(out))
    assert 1 <= before < 3
    result = run_sample_region(_config(bundle, label_map, out))
    assert result.n_new == 3 - before and result.finished == 3 and not list(out.rglob("*.tmp"))
    assert sorted(r["id"] for r in _index(out)) == ["000001", "000002", "000003"]
    for region_id in ("000001", "000002", "000003"):
        assert np.abs(_pixels(reference, region_id) - _pixels(out, region_id)).max() <= 1
    assert run_sample_region(_config(bundle, label_map, out)).n_new == 0
    with pytest.raises(UserError, match="other settings"):
        run_sample_region(_config(bundle, label_map, out, guidance=3.0))
    with pytest.raises(UserError, match="3 regions were made with another map, summary or size"):
        run_sample_region(_config(bundle, label_map, out, summary="lobular carcinoma"))


def test_shards_split_the_regions_and_share_the_folder(bundle, label_map, reference, tmp_path):
    out = tmp_path / "sharded"
    assert run_sample_region(_config(bundle, label_map, out, shard=(1, 2))).n_new == 1  # region 2 of 3
    assert run_sample_region(_config(bundle, label_map, out, shard=(0, 2))).finished == 3
    assert np.abs(_pixels(reference, "000002") - _pixels(out, "000002")).max() <= 1


def test_blending_hides_the_seam_of_windows_that_disagree():
    """Each window's denoiser is sure the image is its own constant (+1 or -1): averaged with flat
    weights the windows leave steps at their borders; the Hann weight leaves none."""
    a = training_alphas_cumprod()
    side, window, stride = 40, 8, 4
    windows = [w for row in window_grid(side, side, window, stride) for w in row]
    rng = np.random.default_rng(0)

    def constant_x0(value: float):
        return lambda x, t: (x - a[t].sqrt() * value) / (1 - a[t]).sqrt()

    groups = [([w], constant_x0(float(rng.choice([-1.0, 1.0])))) for w in windows]
    borders = sorted({e for s in range(0, side - window + 1, stride) for e in (s, s + window) if 0 < e < side})
    scores = {}
    for name, weight in (("flat", torch.ones(window, window)), ("hann", None)):
        noise = torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(0))
        solve = make_solver("ddim")
        canvas = solve(blended_eps_fn(groups, window, side, side, weight), noise, 10, generators=[])[0, 0].numpy()
        scores[name] = seam_score(np.repeat(canvas[:, :, None], 3, axis=2), borders)
    assert scores["flat"] > 10 and scores["hann"] < 1.0, scores


def test_tiled_decode_is_the_whole_decode_when_tiles_agree_and_sees_only_tiles():
    """A decoder that is the same everywhere (nearest upsampling x4) decoded in tiles and blended in
    bands gives exactly the whole picture; the decoder never gets more than a tile."""
    latents = torch.randn(1, 3, 37, 29, generator=torch.Generator().manual_seed(0))
    seen = []

    def upsample(z: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(z.shape[-2:]))
        return torch.nn.functional.interpolate(z, scale_factor=4, mode="nearest")

    image = decode_tiled(upsample, latents, 4, tile=8, stride=3, batch=5)
    assert torch.allclose(image, upsample(latents)[0], atol=1e-5)
    assert set(seen[:-1]) == {(8, 8)}
    as_bytes = decode_tiled(
        upsample, latents, 4, tile=8, stride=4, finish=lambda band: (band * 10).round().to(torch.int16)
    )
    assert as_bytes.dtype == torch.int16 and torch.equal(as_bytes, (upsample(latents)[0] * 10).round().to(torch.int16))


def test_every_solver_runs_on_the_canvas(bundle, label_map, tmp_path):
    for solver in ("dpmpp", "unipc"):
        run_sample_region(
            _config(bundle, label_map, tmp_path / solver, solver=solver, num_regions=1, guidance_interval=(0, 500))
        )
        assert _pixels(tmp_path / solver, "000001").std() > 1


def test_tiff_opens_with_openslide_with_levels_size_and_mpp(reference, tmp_path):
    import openslide

    slide = openslide.OpenSlide(str(reference / "regions" / "000001.tiff"))
    assert (
        slide.level_count == 1
        and slide.dimensions == (64, 64)
        and float(slide.properties["openslide.mpp-x"]) == pytest.approx(1.0)
    )
    image = np.random.default_rng(0).integers(0, 256, (1000, 1100, 3), dtype=np.uint8)
    (tmp_path / "big.tiff").write_bytes(pyramid_tiff_bytes(image, mpp=0.5))
    slide = openslide.OpenSlide(str(tmp_path / "big.tiff"))
    assert slide.level_count == 3 and slide.level_dimensions == ((1100, 1000), (550, 500), (275, 250))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5) and slide.level_downsamples[
        2
    ] == pytest.approx(4.0)
    assert np.array_equal(np.asarray(slide.read_region((0, 0), 0, (1100, 1000)).convert("RGB")), image)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("high/low,low/low\nhigh/low,low/low\n", "is 2x2 cells; a 64 px region"),
        (MAP.replace("-/low", "medium/low"), "cell 'medium/low' is not TUMOR/TIL"),
    ],
)
def test_a_bad_label_map_is_one_line_and_exit_2_before_any_model_loads(bundle, tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    argv = [
        "sample-region",
        "--checkpoint",
        str(bundle),
        "--out",
        str(tmp_path / "out"),
        "--size",
        "64",
        "--label-map",
        str(bad),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and needle in err and not (tmp_path / "out").exists()


def test_png_map_and_regions_file(bundle, tmp_path):
    from PIL import Image

    red_green = np.zeros((3, 3, 3), np.uint8)
    red_green[:, :, 0] = 255  # tumour high everywhere, TIL low
    red_green[0, 0, 1] = 200  # one cell with TIL high
    Image.fromarray(red_green).save(tmp_path / "map.png")
    regions = tmp_path / "regions.jsonl"
    regions.write_text(
        json.dumps({"id": "case-7", "label_map": "map.png", "summary": "lobular"})
        + "\n"
        + json.dumps({"id": "case-8", "level": "low/-", "size": 96})
        + "\n",
        encoding="utf-8",
    )
    run_sample_region(
        RegionConfig(checkpoint=bundle, out=tmp_path / "out", regions=regions, size=64, steps=1, device="cpu")
    )
    index = {r["id"]: r for r in _index(tmp_path / "out")}
    assert (
        index["case-7"]["map"][0] == ["high/high", "high/low", "high/low"] and index["case-7"]["summary"] == "lobular"
    )
    assert (
        index["case-8"]["size"] == 96 and len(index["case-8"]["map"]) == 5 and index["case-8"]["map"][0][0] == "low/-"
    )


def _fake_region_folder(folder: Path, image: np.ndarray, cells: list[list[str]], window: int, stride: int) -> Path:
    """A sample-region folder around a given image (the layout evaluate-region reads)."""
    (folder / "regions").mkdir(parents=True)
    (folder / "regions" / "r.tiff").write_bytes(pyramid_tiff_bytes(image, 1.0))
    (folder / "settings.json").write_text("{}")
    rec = {
        "id": "r",
        "file": "regions/r.tiff",
        "size": image.shape[0],
        "map": cells,
        "window_px": window,
        "stride_px": stride,
        "decode_tile_px": window,
        "decode_stride_px": stride,
        "mpp": 1.0,
    }
    (folder / "index.jsonl").write_text(json.dumps(rec) + "\n")
    return folder


def test_map_agreement_scores_windows_against_their_cells(tmp_path):
    """Windows of haematoxylin-dark 'nuclei' under high cells, pink stroma under low ones: AUROC 1 for
    tumour; the TIL column, all low, is not measured."""
    from histoldm.data.descriptors import compose

    size, window, stride = 128, 32, 32
    rng = np.random.default_rng(0)
    grid = window_grid(size, size, window, stride)
    cells = [[("high" if rng.random() < 0.5 else "low") + "/low" for _ in row] for row in grid]
    cells[0][0], cells[0][1] = "high/low", "low/low"
    conc = np.zeros((size, size, 3), np.float32)
    conc[..., 1] = 0.5  # eosin everywhere
    for i, row in enumerate(grid):
        for j, (y, x) in enumerate(row):
            if cells[i][j].startswith("high"):
                spots = rng.random((window, window)) < 0.4
                conc[y : y + window, x : x + window, 0] = np.where(spots, 1.2, 0.05)
    folder = _fake_region_folder(tmp_path / "regions", compose(conc), cells, window, stride)
    real = write_random_pngs(tmp_path / "real", [(32, 32)] * 6, rng)
    result = run_evaluate_region(
        RegionEvalConfig(
            regions=folder,
            real=real,
            out=tmp_path / "eval",
            extractor=save_pool_extractor(tmp_path / "p.pt"),
            workers=0,
            kid_subset_size=3,
            real_regions=2,
            adherence_permutations=50,
        )
    )
    tumor = result.metrics["map_agreement"]["by_attribute"]
    assert tumor["tumor"]["auroc"] == 1.0 and "not measured" in tumor["til"]["status"]
    assert result.metrics["seam"]["real"] == pytest.approx(1.0, abs=0.5)  # real slide regions: no seam at any border


def test_seam_score_sees_a_step_at_a_border():
    rng = np.random.default_rng(0)
    image = rng.normal(128, 10, (64, 64, 3))
    rec = {"size": 64, "window_px": 32, "stride_px": 16, "decode_tile_px": 32, "decode_stride_px": 16}
    borders = border_positions(rec)
    assert borders == [16, 32, 48]
    assert seam_score(image, borders) == pytest.approx(1.0, abs=0.2)
    image[:, 32:] += 40  # one window brighter than its neighbour
    assert seam_score(image, borders) > 3


def test_crop_metric_is_evaluate_on_the_same_crops(reference, tmp_path):
    from histoldm.evaluate.config import EvaluateConfig
    from histoldm.evaluate.run import run_evaluate

    real = write_random_pngs(tmp_path / "real", [(32, 32)] * 12, np.random.default_rng(1))
    extractor = save_pool_extractor(tmp_path / "pool.pt")
    result = run_evaluate_region(
        RegionEvalConfig(
            regions=reference,
            real=real,
            out=tmp_path / "eval",
            extractor=extractor,
            workers=0,
            kid_subset_size=6,
            real_regions=2,
            adherence_permutations=50,
        )
    )
    crop = result.metrics["crop"]
    assert crop["n_crops"] == 12 == crop["fid"]["protocol"]["n_fake"]  # equal N by default
    rows = [json.loads(line) for line in (tmp_path / "eval/crops/index.jsonl").read_text().splitlines()]
    from PIL import Image

    for row in rows[:4]:  # each crop is the window-size piece of its region it says it is
        region = _pixels(reference, row["region"])
        piece = np.asarray(Image.open(tmp_path / "eval/crops" / row["file"]), dtype=np.int16)
        assert np.array_equal(piece, region[row["y"] : row["y"] + 32, row["x"] : row["x"] + 32])
    alone = run_evaluate(
        EvaluateConfig(
            real=real,
            fake=tmp_path / "eval/crops",
            out=tmp_path / "alone",
            extractor=extractor,
            workers=0,
            kid_subset_size=6,
        )
    ).metrics
    assert crop["fid"]["value"] == pytest.approx(alone.fid.value, rel=1e-9)
    assert crop["kid"]["mean"] == pytest.approx(alone.kid.mean, rel=1e-9)
    assert len({r["region"] for r in rows}) > 1

"""Evaluation: metric math on synthetic features, and one real run of the bundled Inception extractor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from builders import save_pool_extractor, write_random_pngs
from histoldm.cli import main
from histoldm.data.descriptors import compose
from histoldm.errors import UserError
from histoldm.evaluate import adherence as A
from histoldm.evaluate import metrics as M
from histoldm.evaluate.features import (
    INCEPTION_SIZE,
    decode,
    extract_features,
    list_images,
    load_extractor,
    preprocess,
    to_inception_input,
)
from histoldm.evaluate.memorization import memorization_report

RNG = np.random.default_rng(1234)


# --- Frechet distance ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_matches_closed_form_for_diagonal_gaussians(method):
    d = 16
    mu1, mu2 = RNG.normal(size=d), RNG.normal(size=d)
    v1, v2 = RNG.uniform(0.1, 3, d), RNG.uniform(0.1, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method) == pytest.approx(expected, rel=1e-10)


def test_frechet_methods_agree_on_full_and_singular_covariances():
    a, b = RNG.normal(size=(500, 32)), RNG.normal(size=(500, 32)) @ RNG.normal(size=(32, 32)) * 0.3
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert M.frechet_distance(*args, method="eigh") == pytest.approx(
        M.frechet_distance(*args, method="sqrtm"), rel=1e-8
    )
    few = RNG.normal(size=(12, 128))  # fewer samples than dimensions: singular covariance
    mu, sigma = M.gaussian_stats(few)
    for method in ("sqrtm", "eigh"):
        assert abs(M.frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-3


def test_frechet_rejects_invalid_covariance_and_shape_mismatch():
    with pytest.raises(UserError, match="imaginary"):
        M.frechet_distance(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([-1.0, 1.0]))
    with pytest.raises(UserError, match="shapes"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --- KID, precision/recall ----------------------------------------------------------------------


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    x, y = RNG.normal(size=(300, 64)), RNG.normal(size=(300, 64))
    shifted = RNG.normal(size=(300, 64)) + 0.5
    same, same_std = M.kid(x, y, n_subsets=50, subset_size=100, seed=0)
    diff, _ = M.kid(x, shifted, n_subsets=50, subset_size=100, seed=0)
    assert abs(same) < 0.05 * diff
    assert abs(same) < 3 * same_std
    assert diff > 10 * same_std
    assert M.kid(x, y, n_subsets=5, seed=3) == M.kid(x, y, n_subsets=5, seed=3)  # seeded


def test_precision_recall_identical_and_disjoint():
    x = RNG.normal(size=(40, 8))
    assert M.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    assert M.precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)
    with pytest.raises(UserError, match="more than k=3"):
        M.precision_recall(x[:3], x[:3])
    # radii in row blocks (memory batch x N, not N x N) equal the whole-matrix answer; BLAS may sum a
    # block's products in another order than the whole matrix's (it does on AMD EPYC), so not bit for bit
    d = M.pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(M.knn_radii(x, 3, batch=7), np.sort(d, axis=1)[:, 2], rtol=1e-12, atol=0)


# --- statistics files ---------------------------------------------------------------------------


def test_stats_npz_roundtrip_in_pytorch_fid_layout(tmp_path):
    mu, sigma = M.gaussian_stats(RNG.normal(size=(10, 6)))
    M.save_stats(tmp_path / "s.npz", mu, sigma, {"n": 10, "resize": "bicubic"})
    with np.load(tmp_path / "s.npz") as f:  # what pytorch-fid reads
        np.testing.assert_array_equal(f["mu"][:], mu)
        np.testing.assert_array_equal(f["sigma"][:], sigma)
    mu2, sigma2, protocol = M.load_stats(tmp_path / "s.npz")
    assert protocol == {"n": 10, "resize": "bicubic"} and mu2.dtype == np.float64
    np.savez(tmp_path / "external.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    assert M.load_stats(tmp_path / "external.npz")[2] is None
    np.savez(tmp_path / "other.npz", m=mu)
    with pytest.raises(UserError, match="needs arrays 'mu' and 'sigma'"):
        M.load_stats(tmp_path / "other.npz")
    with pytest.raises(UserError, match="not found"):
        M.load_stats(tmp_path / "missing.npz")


# --- memorisation -------------------------------------------------------------------------------


def test_memorization_flags_copies_not_new_draws():
    train = RNG.normal(size=(200, 32))
    paths = [f"t{i}.png" for i in range(200)]
    copies = train[:20] + RNG.normal(scale=1e-4, size=(20, 32))
    fresh = RNG.normal(size=(20, 32))
    hit = memorization_report(copies, train, [f"c{i}" for i in range(20)], paths)
    miss = memorization_report(fresh, train, [f"f{i}" for i in range(20)], paths)
    assert hit["share_below_threshold"] == 1.0
    assert miss["share_below_threshold"] <= 0.2 and miss["chance_level"] == 0.05
    assert hit["closest_pairs"][0]["train"] in paths[:20] and len(hit["closest_pairs"]) == 16


def test_memorization_with_duplicated_training_tiles_still_flags_copies():
    """Each training tile twice: the 5% quantile of train-to-train distances would be 0, and nothing
    can lie below 0 (the old report: '0.000 below threshold 0'). Duplicates are left out of the threshold."""
    base = RNG.normal(size=(100, 32))
    train = np.concatenate([base, base])
    paths = [f"t{i}.png" for i in range(200)]
    copies = base[:20] + RNG.normal(scale=1e-4, size=(20, 32))
    hit = memorization_report(copies, train, [f"c{i}" for i in range(20)], paths)
    miss = memorization_report(RNG.normal(size=(20, 32)), train, [f"f{i}" for i in range(20)], paths)
    assert hit["threshold"] > 0 and hit["share_below_threshold"] == 1.0 and miss["share_below_threshold"] <= 0.2
    assert hit["train_with_exact_duplicate"] == 200 and "not a copy" in hit["note"]
    alike = memorization_report(copies, np.repeat(base[:1], 5, axis=0), [f"c{i}" for i in range(20)], paths[:5])
    assert alike["share_below_threshold"] is None and "deduplicate" in alike["status"]


# --- condition adherence ------------------------------------------------------------------------


def _tile(n_nuclei: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A pink tile with n round haematoxylin nuclei (stain concentrations -> RGB)."""
    conc = np.zeros((size, size, 3), np.float32)
    conc[..., 1] = 0.3
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_nuclei):
        cy, cx = rng.integers(4, size - 4, 2)
        conc[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9, 0] = 1.0
    return compose(conc)


def _generated_set(tmp_path, follows_caption: bool) -> tuple:
    rng = np.random.default_rng(7)
    out = tmp_path / ("good" if follows_caption else "broken")
    (out / "images").mkdir(parents=True)
    rows, caps = [], {"caption": [], "tumor_level": [], "til_level": []}
    for i in range(24):
        level = "high" if i % 2 else "low"
        caption = f"breast tissue, {level} tumor, case {i}"
        n = (30 if level == "high" else 4) if follows_caption else int(rng.integers(4, 31))
        Image.fromarray(_tile(n, rng)).save(out / "images" / f"{i:06d}.png")
        rows.append({"id": i, "caption": caption, "seed": i, "file": f"images/{i:06d}.png"})
        caps["caption"].append(caption), caps["tumor_level"].append(level), caps["til_level"].append(None)
    (out / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table(caps), tmp_path / "captions.parquet")
    return out, tmp_path / "captions.parquet"


def test_adherence_passes_when_captions_are_followed_and_fails_when_ignored(tmp_path):
    good, caps = _generated_set(tmp_path, follows_caption=True)
    broken, _ = _generated_set(tmp_path, follows_caption=False)
    ok = A.run_adherence(good, captions_parquet=caps, n_permutations=200).by_attribute
    bad = A.run_adherence(broken, captions_parquet=caps, n_permutations=200).by_attribute
    assert ok["tumor"].auroc > 0.95 and ok["tumor"].p_value < 0.01 and ok["tumor"].chance == 0.5
    assert 0.25 < bad["tumor"].auroc < 0.75 and bad["tumor"].p_value > 0.05
    assert ok["til"].status.startswith("not measured: 0 images") and not ok["til"].measured
    assert "AUROC" in A.adherence_line("tumor", ok["tumor"])


def test_auroc_of_label_independent_scores_is_near_chance():
    rng = np.random.default_rng(0)
    values = [A.auroc(rng.normal(size=100), rng.integers(0, 2, 100).astype(bool)) for _ in range(50)]
    assert abs(np.mean(values) - 0.5) < 0.03
    with pytest.raises(UserError, match="both levels"):
        A.auroc(np.ones(3), np.ones(3, bool))


# --- images, extractor, end to end --------------------------------------------------------------


def test_preprocess_modes_give_inception_input(tmp_path):
    rgb = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    for mode in ("bicubic", "legacy"):
        x = preprocess(tmp_path / "a.png", mode)
        assert x.shape == (3, INCEPTION_SIZE, INCEPTION_SIZE) and x.min() >= -1.01 and x.max() <= 1.01
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        list_images(tmp_path / "nope")


def _real_set(tmp_path, n=4):
    real = tmp_path / "real"
    real.mkdir()
    for i in range(n):  # 4: the fewest precision/recall with k=3 allows; the network costs ~0.5 s per image
        Image.fromarray(_tile(5 + 8 * i, RNG)).save(real / f"{i}.png")
    return real


def test_half_precision_extractor_gets_the_values_it_would_cast_itself(tmp_path):
    """Workers hand over images already in the extractor's dtype: same features as casting on the device."""
    paths = list_images(_real_set(tmp_path, 2))
    extractor = load_extractor(save_pool_extractor(tmp_path / "pool.pt"), "cpu", "float16")
    from_workers = extract_features(paths, extractor, workers=1).features
    cast_by_extractor = np.concatenate([extractor(preprocess(p, "bicubic")[None]) for p in paths])
    np.testing.assert_allclose(from_workers, cast_by_extractor, rtol=1e-6, atol=0)  # a float16 rounding would be ~1e-3


@pytest.mark.parametrize(
    "height,width", [(256, 256), (100, 140), (299, 250), (512, 512), (37, 41), (1024, 333), (400, 300)]
)
def test_tensor_resize_is_pils_resize(tmp_path, height, width):
    """The GPU path's resize (torch, any device) against PIL's own, on random pixels."""
    Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    pixels = decode(tmp_path / "a.png")
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, height, width)
    for mode in ("bicubic", "legacy"):
        pil, ours = preprocess(tmp_path / "a.png", mode), to_inception_input(pixels[None], mode)[0]
        # Bit for bit on the x86-64 machines measured (docs/evaluation.md); Pillow 13 may resample taller
        # images vertically first, and a compiler may fuse PIL's multiply-adds (FMA, the default on ARM), so
        # the test allows two float32 roundings at 255 (scaled by 1/128): far below anything FID resolves
        assert (pil - ours).abs().max() <= 2 * 2**-16 / 128, (mode, (pil - ours).abs().max())


def test_resizing_on_the_device_gives_the_workers_features(tmp_path, monkeypatch):
    """Decoded pixels of mixed sizes resized after the workers: the same features in the same row order
    (KID draws its subsets by row), broken files still listed, oversized images resized in the workers."""
    from histoldm.evaluate import features as F

    monkeypatch.setattr(F, "MAX_SIDE_TO_SHIP", 300)
    folder = write_random_pngs(
        tmp_path / "mixed", [(256, 256), (120, 90), (256, 256), (299, 299), (320, 320), (120, 90), (256, 256)], RNG
    )
    (folder / "broken.png").write_text("not an image")
    extractor = load_extractor(save_pool_extractor(tmp_path / "pool.pt"), "cpu", "float32")
    paths = list_images(folder)
    results = [
        extract_features(paths, extractor, batch_size=4, workers=1, resize_on_device=flag) for flag in (False, True)
    ]
    for result in results:
        assert [s["file"] for s in result.skipped] == [str(folder / "broken.png")]
        assert result.paths == [p for p in paths if p.name != "broken.png"]
    np.testing.assert_allclose(
        results[0].features, results[1].features, rtol=1e-6, atol=0
    )  # batches grouped differently
    shipped = F.ImageFiles(paths, "bicubic", resize=False)
    assert shipped[0][1].dtype == torch.uint8 and shipped[4][1].shape == (
        3,
        INCEPTION_SIZE,
        INCEPTION_SIZE,
    )  # 320 px: resized here


def test_evaluate_end_to_end_with_real_inception(tmp_path, capsys):
    real, fake = _real_set(tmp_path), tmp_path / "fake"
    shutil.copytree(real, fake)
    (fake / "notes.png").write_text("not an image")  # skipped and recorded, the run goes on
    out = tmp_path / "eval"
    rc = main(
        [
            "evaluate",
            "--real",
            str(real),
            "--fake",
            str(fake),
            "--out",
            str(out),
            "--train-real",
            str(real),
            "--kid-subsets",
            "3",
            "--fid-method",
            "eigh",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["fid"]["value"]) < 1e-2  # a set against itself
    assert metrics["precision_recall"]["precision"] == 1.0 and metrics["precision_recall"]["recall"] == 1.0
    assert metrics["memorization"]["share_below_threshold"] == 1.0  # exact copies of the training set
    for key in ("fid", "kid", "precision_recall", "memorization"):
        p = metrics[key]["protocol"]
        assert p["n_real"] == 4 and p["n_fake"] == 4 and p["resize"] == "bicubic" and p["feature_dim"] == 2048
        assert len(p["extractor_sha256"]) == 64 and p["image_format_fake"] == "png"
        assert metrics[key]["protocol_line"] in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"].endswith("notes.png") for s in manifest["skipped"]] == [True]
    assert (out / "real_stats.npz").is_file() and (out / "memorization_pairs.png").is_file()


def test_evaluate_in_two_processes_gives_the_single_process_metrics(tmp_path):
    """Each process extracts images i, i+N, ... of every set and saves its share; run here rank by rank
    (what `accelerate launch` runs at once, barrier between): rank 1 leaves its shares, rank 0 merges
    them in input order and computes the metrics one process computes."""
    from histoldm.devices import Processes
    from histoldm.evaluate.config import EvaluateConfig
    from histoldm.evaluate.run import run_evaluate

    real, ext = _real_set(tmp_path, 5), save_pool_extractor(tmp_path / "pool.pt")
    fake = tmp_path / "fake"
    shutil.copytree(real, fake)
    (fake / "3.png").unlink()
    (fake / "9-notes.png").write_text("not an image")  # skipped by whichever process holds it
    for i in range(5, 8):
        Image.fromarray(_tile(50 + 3 * i, RNG)).save(fake / f"{i}.png")
    cfg = EvaluateConfig(
        real=real,
        fake=fake,
        out=tmp_path / "one",
        extractor=ext,
        workers=0,
        train_real=real,
        kid_subsets=5,
        kid_subset_size=4,
        fid_method="eigh",
    )
    one = run_evaluate(cfg).metrics.to_json()
    two = cfg.model_copy(update={"out": tmp_path / "two"})
    ranks = [Processes(r, 2, torch.device("cpu"), lambda: None) for r in (0, 1)]
    assert run_evaluate(two, ranks[1]) is None  # its shares saved; the main process computes the metrics
    assert sorted(p.name for p in (tmp_path / "two" / "features").iterdir()) == [
        "fake.rank1-of-2.npz",
        "real.rank1-of-2.npz",
    ]
    result = run_evaluate(two, ranks[0])
    sharded = result.metrics.to_json()
    assert json.loads((result.out / "metrics.json").read_text()) == json.loads(
        json.dumps(sharded)
    )  # the result is what was written
    assert not (tmp_path / "two" / "features").exists()  # merged and removed
    assert sharded["fid"]["value"] == pytest.approx(one["fid"]["value"], rel=1e-6, abs=1e-9) and one["fid"]["value"] > 1
    for key in ("kid", "precision_recall", "memorization"):
        assert sharded[key]["protocol"] == one[key]["protocol"]
    assert sharded["kid"]["mean"] == pytest.approx(one["kid"]["mean"], rel=1e-6, abs=1e-9)
    assert (sharded["precision_recall"]["precision"], sharded["precision_recall"]["recall"]) == (
        one["precision_recall"]["precision"],
        one["precision_recall"]["recall"],
    )
    skipped = [json.loads((tmp_path / d / "manifest.json").read_text())["skipped"] for d in ("one", "two")]
    assert [s["file"] for s in skipped[0]] == [s["file"] for s in skipped[1]] == [str(fake / "9-notes.png")]


def test_reference_statistics_and_bad_inputs_with_a_user_extractor(tmp_path, capsys):
    real, ext = _real_set(tmp_path, 5), save_pool_extractor(tmp_path / "pool.pt")
    stats = tmp_path / "ref.npz"
    assert main(["fid-ref", str(real), "--out", str(stats), "--extractor", str(ext), "--workers", "0"]) == 0
    assert "user TorchScript pool.pt" in capsys.readouterr().out
    assert M.load_stats(stats)[2]["n"] == 5 and (tmp_path / "ref.npz.manifest.json").is_file()
    for method in ("sqrtm", "eigh"):  # the saved statistics against the same images: ~0
        out = tmp_path / f"e-{method}"
        assert (
            main(
                [
                    "evaluate",
                    "--real",
                    str(stats),
                    "--fake",
                    str(real),
                    "--out",
                    str(out),
                    "--extractor",
                    str(ext),
                    "--fid-method",
                    method,
                    "--workers",
                    "0",
                ]
            )
            == 0
        )
        metrics = json.loads((out / "metrics.json").read_text())
        assert abs(metrics["fid"]["value"]) < 1e-6 and metrics["fid"]["protocol"]["n_real"] == 5
        assert (
            np.isfinite(metrics["kid"]["mean"]) and metrics["precision_recall"]["precision"] == 1.0
        )  # from the stored features
    assert "FID" in capsys.readouterr().out
    bare = tmp_path / "bare.npz"  # statistics without features: FID only, the others said to be skipped
    assert (
        main(["fid-ref", str(real), "--out", str(bare), "--extractor", str(ext), "--workers", "0", "--no-features"])
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(bare),
                "--fake",
                str(real),
                "--out",
                str(tmp_path / "e-bare"),
                "--extractor",
                str(ext),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "e-bare" / "metrics.json").read_text())
    assert abs(metrics["fid"]["value"]) < 1e-6 and "need real features" in metrics["kid"]["status"]
    assert "KID skipped: real given as statistics without features" in capsys.readouterr().out

    def fails(args, message):
        assert main(args) == 2
        assert message in capsys.readouterr().err

    base = ["--extractor", str(ext), "--workers", "0"]
    fails(
        [
            "evaluate",
            "--real",
            str(stats),
            "--fake",
            str(real),
            "--out",
            str(tmp_path / "x"),
            "--resize",
            "legacy",
            *base,
        ],
        "resize=bicubic",
    )
    fails(["evaluate", "--real", str(stats), "--fake", str(real), "--out", str(tmp_path / "x")], "extractor_sha256=")
    fails(
        ["evaluate", "--real", str(tmp_path / "missing"), "--fake", str(real), "--out", str(tmp_path / "x"), *base],
        "not found",
    )
    (tmp_path / "empty").mkdir()
    fails(
        ["evaluate", "--real", str(real), "--fake", str(tmp_path / "empty"), "--out", str(tmp_path / "x"), *base],
        "no images found",
    )
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.png").write_text("nope")
    fails(["evaluate", "--real", str(real), "--fake", str(junk), "--out", str(tmp_path / "x"), *base], "could be read")
    fails(
        ["fid-ref", str(real), "--out", str(tmp_path / "r.npz"), "--extractor", str(real / "0.png")],
        "not a TorchScript file",
    )


def _folder(tmp_path, name, n, size):
    return write_random_pngs(tmp_path / name, [(size, size)] * n, RNG)


def _no_features(monkeypatch):
    """Fail the test if any feature is computed: the error must come first."""
    from histoldm.evaluate import run

    def refuse(*args, **kwargs):
        raise AssertionError("features were computed before the input check")

    monkeypatch.setattr(run.F, "extract_features", refuse)


def test_real_and_generated_sets_of_different_sizes_are_refused_before_features(tmp_path, capsys, monkeypatch):
    """256 px reals against 64 px fakes would give an FID of the resolution gap: exit 2 unless --allow-size-mismatch."""
    real, fake, ext = (
        _folder(tmp_path, "real", 5, 48),
        _folder(tmp_path, "fake", 5, 32),
        save_pool_extractor(tmp_path / "pool.pt"),
    )
    base = ["--extractor", str(ext), "--workers", "0"]
    stats = tmp_path / "ref.npz"
    assert main(["fid-ref", str(real), "--out", str(stats), *base]) == 0
    assert M.load_stats(stats)[2]["image_size"] == "48x48" and "size real 48x48" in capsys.readouterr().out
    allowed = tmp_path / "allowed"
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(real),
                "--fake",
                str(fake),
                "--out",
                str(allowed),
                "--allow-size-mismatch",
                *base,
            ]
        )
        == 0
    )
    p = json.loads((allowed / "metrics.json").read_text())["fid"]["protocol"]
    assert (p["image_size_real"], p["image_size_fake"]) == (
        "48x48",
        "32x32",
    ) and "size real 48x48 / fake 32x32" in capsys.readouterr().out
    _no_features(monkeypatch)
    for ref in (real, stats):  # a folder, and statistics that recorded their size
        assert main(["evaluate", "--real", str(ref), "--fake", str(fake), "--out", str(tmp_path / "e"), *base]) == 2
        err = capsys.readouterr().err
        assert (
            f"{ref}: real images are 48x48 px but the generated ones in {fake} are 32x32 px" in err
            and len(err.strip().splitlines()) == 1
        )
    assert not (tmp_path / "e").exists()


def test_outputs_and_inputs_are_checked_before_features(tmp_path, capsys, monkeypatch):
    """fid-ref --out FOLDER used to extract every feature and then blame a temp file; --adherence without
    levels failed after the features; both now stop first, naming the path as typed."""
    real, ext = _folder(tmp_path, "real", 4, 32), save_pool_extractor(tmp_path / "pool.pt")
    (real / "index.jsonl").write_text(
        "".join(json.dumps({"id": i, "caption": "c", "file": f"{i}.png"}) + "\n" for i in range(4))
    )
    base = ["--extractor", str(ext), "--workers", "0"]
    _no_features(monkeypatch)

    def fails(args, message):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and ".tmp" not in err and len(err.strip().splitlines()) == 1, err

    existing = tmp_path / "stats_folder"
    existing.mkdir()
    fails(["fid-ref", str(real), "--out", str(existing), *base], f"{existing}: statistics file is an existing folder")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    fails(
        ["fid-ref", str(real), "--out", str(blocker / "ref.npz"), *base],
        f"{blocker / 'ref.npz'}: cannot write the output there ({blocker} is a file)",
    )
    fails(
        ["evaluate", "--real", str(real), "--fake", str(real), "--out", str(blocker), *base],
        f"{blocker}: output folder is an existing file",
    )
    fails(
        ["evaluate", "--real", str(real), "--fake", str(real), "--out", str(tmp_path / "e"), "--adherence", *base],
        "adherence needs --captions",
    )
    fails(
        [
            "evaluate",
            "--real",
            str(real),
            "--fake",
            str(real),
            "--out",
            str(tmp_path / "e"),
            "--adherence",
            "--captions",
            str(tmp_path / "nope.parquet"),
            *base,
        ],
        f"{tmp_path / 'nope.parquet'}: captions file not found",
    )
    fails(
        [
            "evaluate",
            "--real",
            str(real),
            "--fake",
            str(real),
            "--out",
            str(tmp_path / "e"),
            "--train-real",
            str(tmp_path / "nope"),
            *base,
        ],
        f"{tmp_path / 'nope'}: image folder not found",
    )
    fails(
        [
            "evaluate",
            "--real",
            str(real),
            "--fake",
            str(real),
            "--out",
            str(tmp_path / "e"),
            "--protocol",
            "clean",
            "--resize",
            "legacy",
            *base,
        ],
        "protocol clean resizes bicubic, not legacy",
    )


def test_three_generated_images_give_every_metric_they_allow(tmp_path, capsys):
    """Precision/recall needs more than k images per set; with 3 fakes it is skipped with the reason and
    FID and KID are still computed (before: no metric at all)."""
    real, fake, ext = (
        _folder(tmp_path, "real", 6, 32),
        _folder(tmp_path, "fake", 3, 32),
        save_pool_extractor(tmp_path / "pool.pt"),
    )
    out = tmp_path / "e"
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(real),
                "--fake",
                str(fake),
                "--out",
                str(out),
                "--extractor",
                str(ext),
                "--workers",
                "0",
                "--kid-subsets",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        np.isfinite(metrics["fid"]["value"])
        and np.isfinite(metrics["kid"]["mean"])
        and "precision" not in metrics["precision_recall"]
    )
    assert (
        "more than k=3 images per set" in metrics["precision_recall"]["status"]
        and metrics["precision_recall"]["protocol"]["n_fake"] == 3
    )
    assert "precision/recall skipped: needs more than k=3" in printed and "FID " in printed and "KID " in printed
    one = _folder(tmp_path, "one", 1, 32)
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(real),
                "--fake",
                str(one),
                "--out",
                str(tmp_path / "e1"),
                "--extractor",
                str(ext),
                "--workers",
                "0",
            ]
        )
        == 2
    )
    assert f"{one}: FID needs at least 2 readable images per set, got 1" in capsys.readouterr().err


def test_pytorch_fid_protocol_reproduces_pytorch_fid(tmp_path, monkeypatch):
    """`--protocol pytorch-fid` with the bundled network against pytorch-fid 0.3.0's own code (its InceptionV3
    with the FID blocks, its image loading, resize and scaling, its statistics and Frechet distance), the
    bundled TorchScript's tensors loaded into pytorch-fid's layout (tests/torchvision_inception_parts.py says
    why torchvision's generic blocks are stand-ins). Fails if either protocol drifts: the clean protocol's
    features differ from pytorch-fid's by ~1 (measured 1.33), these by ~1e-6."""
    from histoldm.evaluate.config import FidRefConfig
    from histoldm.evaluate.run import run_fid_ref
    from torchvision_inception_parts import bundled_state_dict, import_pytorch_fid

    folder = write_random_pngs(
        tmp_path / "imgs", [(64, 64), (310, 300)], RNG
    )  # upsampled (the demo's size), downsampled
    result = run_fid_ref(FidRefConfig(images=folder, out=tmp_path / "ours.npz", protocol="pytorch-fid", workers=0))
    mu, sigma, recorded = M.load_stats(tmp_path / "ours.npz")
    assert (
        recorded["protocol"] == "pytorch-fid"
        and recorded["resize"] == "legacy"
        and result.protocol.protocol == "pytorch-fid"
    )

    inception, fid_score = import_pytorch_fid(monkeypatch)
    template = inception._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    mapped = bundled_state_dict(load_extractor().module, template)
    monkeypatch.setattr(
        inception, "load_state_dict_from_url", lambda *a, **k: mapped
    )  # the weights, not the computation
    model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    files = [str(p) for p in list_images(folder)]
    theirs = fid_score.get_activations(files, model, batch_size=1, dims=2048, device="cpu", num_workers=0)
    mu_t, sigma_t = (
        np.mean(theirs, axis=0),
        np.cov(theirs, rowvar=False),
    )  # pytorch-fid's calculate_activation_statistics
    assert np.abs(theirs).max() > 1.0  # real activations, not zeros
    np.testing.assert_allclose(mu, mu_t, rtol=0, atol=1e-4)
    np.testing.assert_allclose(sigma, sigma_t, rtol=0, atol=1e-4)
    # the Frechet distance of both to another set, in pytorch-fid's function and ours (a 64-d block: scipy's
    # sqrtm at 2048-d costs 10-40 s on a small CPU; the formula does not depend on the dimension)
    other = RNG.normal(size=(200, 64)) * np.abs(mu_t[:64]) + mu_t[:64]
    mu_o, sigma_o = other.mean(0), np.cov(other, rowvar=False)
    expected = fid_score.calculate_frechet_distance(mu_t[:64], sigma_t[:64, :64], mu_o, sigma_o)
    assert M.frechet_distance(mu[:64], sigma[:64, :64], mu_o, sigma_o) == pytest.approx(expected, rel=1e-5)


def test_fid_protocol_is_frozen_and_extended_into_new_objects():
    """The protocol is built once and extended (never mutated); its JSON holds only the fields that
    are set, in the shape metrics.json has always had (seeds as a list)."""
    import dataclasses

    from histoldm.evaluate.protocol import FidProtocol

    base = FidProtocol(
        protocol="clean",
        resize="bicubic",
        resize_detail="d",
        resize_where="w",
        extractor="e",
        extractor_sha256="ab" * 32,
    )
    sets = base.extend(
        n_real=5, n_fake=4, image_format_real="png", image_format_fake="png", feature_dim=2048, seeds=(0, 1)
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.n_real = 3
    assert base.n_real is None and sets.n_real == 5
    entry = sets.extend(fid_method="eigh").entry(value=1.5)
    assert entry == {
        "value": 1.5,
        "protocol_line": M.protocol_line(entry["protocol"]),
        "protocol": {
            "protocol": "clean",
            "resize": "bicubic",
            "resize_detail": "d",
            "resize_where": "w",
            "extractor": "e",
            "extractor_sha256": "ab" * 32,
            "n_fake": 4,
            "image_format_fake": "png",
            "feature_dim": 2048,
            "n_real": 5,
            "image_format_real": "png",
            "seeds": [0, 1],
            "fid_method": "eigh",
        },
    }
    assert "fid_method" not in sets.as_dict() and "N real 5, N fake 4" in sets.line()


def test_evaluate_against_fid_ref_statistics_gives_the_folders_metrics(tmp_path, capsys):
    """fid-ref keeps the features: evaluate --real STATS.npz gives the FID, KID and precision/recall that
    --real FOLDER gives on the same images; statistics of another protocol are one line, exit 2."""
    real, fake, ext = (
        _folder(tmp_path, "real", 7, 32),
        _folder(tmp_path, "fake", 6, 32),
        save_pool_extractor(tmp_path / "pool.pt"),
    )
    base = [
        "--fake",
        str(fake),
        "--extractor",
        str(ext),
        "--workers",
        "0",
        "--kid-subsets",
        "4",
        "--fid-method",
        "eigh",
    ]
    stats = tmp_path / "test_stats.npz"
    assert main(["fid-ref", str(real), "--out", str(stats), "--extractor", str(ext), "--workers", "0"]) == 0
    assert main(["evaluate", "--real", str(real), "--out", str(tmp_path / "from-folder"), *base]) == 0
    assert main(["evaluate", "--real", str(stats), "--out", str(tmp_path / "from-stats"), *base]) == 0
    printed = capsys.readouterr().out
    folder, saved = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("from-folder", "from-stats"))
    assert saved["fid"]["value"] == pytest.approx(folder["fid"]["value"], rel=1e-9) and folder["fid"]["value"] > 0.01
    assert saved["kid"]["mean"] == pytest.approx(folder["kid"]["mean"], rel=1e-5, abs=1e-9)
    assert saved["precision_recall"]["precision"] == folder["precision_recall"]["precision"]
    assert saved["precision_recall"]["recall"] == folder["precision_recall"]["recall"]
    assert saved["kid"]["protocol"]["n_real"] == 7 and "KID skipped" not in printed
    assert (
        main(["evaluate", "--real", str(stats), "--out", str(tmp_path / "x"), *base, "--protocol", "pytorch-fid"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{stats}: statistics made with resize=bicubic, this run uses legacy" in err


def test_small_sets_print_the_fid_caveat_beside_the_number(tmp_path, capsys):
    """4 against 4 images: the printed FID line carries the small-N note with both N, not only metrics.json."""
    real, fake = _folder(tmp_path, "real", 4, 32), _folder(tmp_path, "fake", 4, 32)
    ext = save_pool_extractor(tmp_path / "pool.pt")
    assert (
        main(
            [
                "evaluate",
                "--real",
                str(real),
                "--fake",
                str(fake),
                "--out",
                str(tmp_path / "e"),
                "--extractor",
                str(ext),
                "--workers",
                "0",
                "--kid-subsets",
                "2",
            ]
        )
        == 0
    )
    fid_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("FID "))
    note = json.loads((tmp_path / "e" / "metrics.json").read_text())["fid"]["note"]
    assert "N = 4 real / 4 generated" in note and "biased upward" in note
    assert fid_line.index(note) < fid_line.index("[protocol")  # beside the number, before the protocol


def test_noise_floor_records_both_sets_image_sizes(tmp_path):
    """The seed-to-seed floor's protocol names the image sizes as evaluate's does (its line read 'size real None')."""
    from histoldm.evaluate.config import SeedFloorConfig
    from histoldm.evaluate.noise_floor import run_seed_floor

    folders = []
    for seed in (0, 1):
        folder = _folder(tmp_path, f"seed{seed}", 5, 32)
        (folder / "settings.json").write_text(json.dumps({"seed": seed, "steps": 4}))
        (folder / "index.jsonl").write_text(
            "".join(json.dumps({"id": p.stem, "file": p.name}) + "\n" for p in sorted(folder.glob("*.png")))
        )
        folders.append(folder)
    floor = run_seed_floor(
        SeedFloorConfig(
            first=folders[0],
            second=folders[1],
            out=tmp_path / "floor",
            kid_subsets=2,
            workers=0,
            extractor=save_pool_extractor(tmp_path / "pool.pt"),
        )
    ).metrics.to_json()
    for key in ("fid", "kid"):
        assert (floor[key]["protocol"]["image_size_real"], floor[key]["protocol"]["image_size_fake"]) == (
            "32x32",
            "32x32",
        )
        assert (
            "size real 32x32 / fake 32x32" in floor[key]["protocol_line"] and "None" not in floor[key]["protocol_line"]
        )

"""PathLDM's data path: larger tiles trained on random crops, several summaries per case, its numerics,
and FID statistics made by other tools."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from builders import save_pool_extractor, write_random_pngs
from histoldm.cli import main
from histoldm.errors import UserError
from histoldm.train.data import Stream, crop_window, pick_captions, random_crop, step_generator

WSIS = ["TCGA-A1-0001-01Z-00-DX1.abc", "TCGA-B2-0002-01Z-00-DX1.def"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pathldm_files(root: Path, tile: int, per_wsi: int) -> tuple[Path, Path]:
    """A PathLDM HDF5 of `tile` px JPEG tiles and a train.npz in its multiple-captions layout
    (summaries: wsi -> list of summaries)."""
    rng = np.random.default_rng(0)
    rows = [(w, f"{k}_0_0") for w in WSIS for k in range(per_wsi)]
    h5 = root / "TCGA_BRCA_10x_448_tumor.hdf5"
    with h5py.File(h5, "w") as f:
        x = f.create_dataset("X", (len(rows),), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(len(rows)):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8)).save(buf, format="JPEG")
            x[i] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        f["wsi"] = np.array([w.encode() for w, _ in rows])
        f["folder_name"] = np.array([fo.encode() for _, fo in rows])
    prob = {w: {f"{k}_0_0": 0.2 + 0.6 * (k % 2) for k in range(per_wsi)} for w in WSIS}
    np.savez(
        root / "train.npz",
        indices=np.arange(len(rows)),
        prob_tumor=prob,
        prob_til=prob,
        summaries={
            WSIS[0]: ["Invasive ductal carcinoma, grade 2.", "IDC, grade two."],
            WSIS[1]: ["Lobular carcinoma."],
        },
    )
    return h5, root / "train.npz"


def test_import_keeps_448_px_tiles_and_crops_them_to_256_on_the_latent_grid(tmp_path, capsys):
    """PathLDM's sizes: 448 px tiles stay 448 px (no resize, said on the console); a 256 px crop of an
    f4 latent is a 64x64 window at a fresh offset per read, and every window is the latent of a
    256 px pixel crop's position (offsets on the stride)."""
    h5, npz = _pathldm_files(tmp_path, 448, 1)
    assert main(["import", "pathldm", str(h5), "--npz", str(npz), "--out", str(tmp_path / "store")]) == 0
    assert "tiles kept at their stored size, not resized: 448x448 px (2)" in capsys.readouterr().out
    assert {Image.open(p).size for p in (tmp_path / "store").rglob("*.png")} == {(448, 448)}

    meta = {"size": 112, "image_size": 448}
    assert crop_window(meta, 256) == 64 and crop_window(meta, None) == 112
    for bad in (250, 452):  # off the stride of 4; larger than the tile
        with pytest.raises(UserError, match="data.crop"):
            crop_window(meta, bad)
    with pytest.raises(UserError, match="does not record its image size"):
        crop_window({"size": 112}, 256)
    latents = torch.randn(3, 3, 112, 112)
    offsets = []
    for draw in range(4):  # four reads of the same batch (e.g. four epochs)
        windows = random_crop(latents, 64, step_generator(0, draw, 0, torch.device("cpu"), Stream.CROP))
        assert windows.shape == (3, 3, 64, 64)
        found = []
        for i in range(3):
            hits = [
                (y, x)
                for y in range(49)
                for x in range(49)
                if torch.equal(latents[i, :, y : y + 64, x : x + 64], windows[i])
            ]
            assert len(hits) == 1
            found.append(hits[0])
        offsets.append(found)
    assert all(len({o[i] for o in offsets}) > 1 for i in range(3))  # each item gets other crops on later reads


def test_pathldm_store_trains_on_random_crops_with_one_of_several_summaries(tmp_path, monkeypatch):
    """At the scaled-down 448 -> 256 ratio (112 px tiles, 64 px model input): import pathldm (multiple-
    captions npz) -> captions --all-summaries -> encode-latents at the stored size -> encode-text ->
    train with data.crop. The model is built for the crop, windows of a patch differ between epochs,
    and a case with two summaries gives its patches two captions to draw from."""
    import histoldm.train.data as data
    from histoldm.models.bundle import read_bundle_meta
    from histoldm.train.config import TrainConfig
    from histoldm.train.latents import LatentCache
    from histoldm.train.trainer import run_train

    h5, npz = _pathldm_files(tmp_path, 112, 3)
    store = tmp_path / "store"
    assert main(["import", "pathldm", str(h5), "--npz", str(npz), "--out", str(store)]) == 0
    assert main(["captions", str(store), "--summaries", str(store / "summaries.jsonl"), "--all-summaries"]) == 0
    captions = pq.read_table(store / "captions.parquet").to_pylist()
    per_patch = {}
    for row in captions:
        per_patch.setdefault(row["patch_id"], []).append(row["caption"])
    assert sorted(len(v) for v in per_patch.values()) == [1, 1, 1, 2, 2, 2]
    assert any(c.endswith("IDC, grade two.") for c in per_patch[next(p for p in per_patch if p.startswith(WSIS[0]))])
    assert (
        main(
            ["encode-latents", str(store), "--vae", "kl-f4-tiny", "--out", str(tmp_path / "lat"), "--set", "workers=0"]
        )
        == 0
    )
    lat_meta = LatentCache.open(tmp_path / "lat").meta
    assert (lat_meta["image_size"], lat_meta["size"]) == (112, 28)  # as stored: no resize
    assert (
        main(
            [
                "encode-text",
                str(store / "captions.parquet"),
                "--text-encoder",
                "tiny-clip",
                "--out",
                str(tmp_path / "text"),
            ]
        )
        == 0
    )

    reads: dict[bytes, list[tuple[int, int]]] = {}
    picks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording_crop(latents, size, gen):
        windows = random_crop(latents, size, gen)
        for full, window in zip(latents, windows):
            hit = [
                (y, x)
                for y in range(full.shape[-2] - size + 1)
                for x in range(full.shape[-1] - size + 1)
                if torch.equal(full[:, y : y + size, x : x + size], window)
            ]
            reads.setdefault(full.numpy().tobytes(), []).append(hit[0])
        return windows

    def recording_pick(rows, counts, gen):
        picks.append((counts.clone(), pick_captions(rows, counts, gen)))
        return picks[-1][1]

    monkeypatch.setattr(data, "random_crop", recording_crop)
    monkeypatch.setattr(data, "pick_captions", recording_pick)
    cfg = TrainConfig.model_validate(
        {
            "runs_dir": str(tmp_path / "runs"),
            "max_steps": 6,
            "batch_size": 2,
            "precision": "float32",
            "log_every": 3,
            "checkpoint_every": 6,
            "data": {
                "latents": str(tmp_path / "lat"),
                "text_cache": str(tmp_path / "text"),
                "captions": str(store / "captions.parquet"),
                "crop": 64,
                "augment": "flips",
                "workers": 0,
            },
            "model": {"unet_preset": "tiny"},
            "optim": {"warmup_steps": 1},
        }
    )
    result = run_train(cfg)
    meta = read_bundle_meta(Path(result.bundle))
    assert meta.latent.size == 16  # the UNet's input: the 64 px crop, at the tiles' magnification
    assert json.loads((Path(result.bundle) / "unet" / "config.json").read_text())["sample_size"] == 16
    assert len(reads) == 6 and all(len(offsets) == 2 for offsets in reads.values())  # 6 patches, 2 epochs
    assert all(offsets[0] != offsets[1] for offsets in reads.values())
    assert (
        sorted(int(c) for counts, _ in picks for c in counts) == [1] * 6 + [2] * 6
    )  # one item per patch, not per caption
    with pytest.raises(UserError, match="data.crop"):
        run_train(
            cfg.model_copy(update={"data": cfg.data.model_copy(update={"crop": 66}), "run_dir": tmp_path / "bad"})
        )


def test_pick_captions_draws_uniformly_among_a_patchs_captions():
    rows = torch.tensor([[7, -1, -1], [3, 4, -1], [0, 1, 2]])
    counts = torch.tensor([1, 2, 3])
    drawn = torch.stack([pick_captions(rows, counts, torch.Generator().manual_seed(s)) for s in range(3000)])
    assert set(drawn[:, 0].tolist()) == {7}
    for item, values in ((1, [3, 4]), (2, [0, 1, 2])):
        share = torch.stack([(drawn[:, item] == v).float().mean() for v in values])
        assert set(drawn[:, item].tolist()) == set(values) and torch.allclose(
            share, torch.full_like(share, 1 / len(values)), atol=0.04
        )


def test_summary_lists_take_variants_and_repeated_lines(tmp_path):
    from histoldm.data.captions import load_summaries, load_summary_lists

    path = tmp_path / "s.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"case_id": "A", "summary": "one", "variants": ["one", "two"]},
                {"case_id": "A", "summary": "three"},
                {"case_id": "A", "summary": "two"},
                {"case_id": "B", "summary": "b", "status": "failed"},
                {"case_id": "C", "summary": "  "},
            ]
        )
        + "\n"
    )
    assert load_summary_lists(path) == {"A": ["one", "two", "three"]}
    assert load_summaries(path) == {"A": "two"}  # without all_summaries: one summary per case, as before


def test_pathldm_numerics_resolve_and_truncate():
    from histoldm.devices import sampling_numerics, text_dtype
    from histoldm.sampling.run import to_uint8

    cpu = torch.device("cpu")
    n = sampling_numerics("pathldm", "auto", cpu)
    assert (n.weights, n.autocast, n.truncate, n.text_dtype) == (torch.float32, torch.float16, True, "float32")
    d = sampling_numerics("default", "auto", cpu)
    assert (d.weights, d.autocast, d.truncate) == (torch.float32, None, False)
    with pytest.raises(UserError, match="numerics pathldm"):
        text_dtype("pathldm", "bfloat16")
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0]).view(1, 1, 5).expand(3, 1, 5)
    assert to_uint8(x)[0, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x, truncate=True)[0, 0].tolist() == [0, 0, 127, 254, 255]


def test_evaluate_takes_foreign_statistics_and_says_so(tmp_path, capsys):
    """A pytorch-fid / PathLDM .npz (mu and sigma only): FID against it, the protocol line naming it
    as another tool's statistics; features of another width are one line, exit 2."""
    from histoldm.evaluate import metrics as M
    from histoldm.evaluate.features import extract_features, list_images, load_extractor

    save_pool_extractor(tmp_path / "pool.pt")
    rng = np.random.default_rng(1)
    fake = write_random_pngs(tmp_path / "fake", [(64, 64)] * 4, rng)
    real = rng.normal(size=(60, 48))
    np.savez(
        tmp_path / "center_crop_real_stats.npz",
        mu=real.mean(0).astype(np.float32),
        sigma=np.cov(real, rowvar=False).astype(np.float32),
    )
    args = [
        "evaluate",
        "--real",
        str(tmp_path / "center_crop_real_stats.npz"),
        "--fake",
        str(fake),
        "--out",
        str(tmp_path / "eval"),
        "--extractor",
        str(tmp_path / "pool.pt"),
        "--workers",
        "0",
    ]
    assert main(args) == 0
    assert (
        "real statistics: center_crop_real_stats.npz from another tool (e.g. pytorch-fid, PathLDM): its preprocessing "
        "is not ours" in capsys.readouterr().out
    )
    fid = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fid"]
    features = extract_features(
        list_images(fake), load_extractor(tmp_path / "pool.pt", "cpu", "float32"), workers=0
    ).features
    mu_r, sigma_r, _ = M.load_stats(tmp_path / "center_crop_real_stats.npz")
    assert fid["value"] == pytest.approx(M.frechet_distance(mu_r, sigma_r, *M.gaussian_stats(features)), rel=1e-6)
    np.savez(tmp_path / "wide.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert main(args[:2] + [str(tmp_path / "wide.npz")] + args[3:]) == 2
    assert "statistics of 2048-d features, this run's extractor gives 48-d" in capsys.readouterr().err


def test_sampling_a_patch_with_several_captions_gives_each_its_own_id(tmp_path):
    import pyarrow as pa

    from histoldm.sampling.captions_io import read_caption_items

    pq.write_table(
        pa.table({"patch_id": ["p1", "p1", "p2", "p1"], "caption": ["a", "b", "c", "d"]}), tmp_path / "captions.parquet"
    )
    items, _ = read_caption_items(tmp_path / "captions.parquet")
    assert [(i.id, i.caption) for i in items] == [("p1", "a"), ("p1~2", "b"), ("p2", "c"), ("p1~3", "d")]

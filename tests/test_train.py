"""Autoencoder, latent cache and LDM training on CPU with tiny models and synthetic caches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from histoldm.cli import main
from histoldm.errors import UserError
from histoldm.models.bundle import read_bundle_meta
from histoldm.train.checkpoint import read_latest
from histoldm.train.trainer import TrainConfig, run_train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CAPTIONS = ["high tumor; low til; invasive carcinoma", "low tumor; high til; lymphocytes", "low tumor; low til; stroma"]
DIM, LENGTH, SIZE = 16, 6, 8


def _write_caches(root: Path, n: int = 48, fingerprint: str = "synthetic-ae") -> dict:
    """Latents that depend on the caption (a learnable signal), a text cache, captions and a split."""
    g = torch.Generator().manual_seed(0)
    lat_dir, text_dir = root / "latents", root / "text"
    lat_dir.mkdir(parents=True)
    text_dir.mkdir()
    patterns = torch.randn(len(CAPTIONS), 3, SIZE, SIZE, generator=g)
    which = torch.arange(n) % len(CAPTIONS)
    latents = patterns[which] + 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    np.save(lat_dir / "latents-00000.npy", latents.numpy().astype(np.float16))
    ids = [f"p{i:04d}" for i in range(n)]
    pq.write_table(pa.table({"patch_id": ids, "shard": pa.array([0] * n, pa.int32()), "row": pa.array(range(n), pa.int32())}), lat_dir / "index.parquet")
    (lat_dir / "meta.json").write_text(json.dumps({"autoencoder": "synthetic", "kind": "kl", "scaling_factor": 1.0, "channels": 3,
                                                   "size": SIZE, "fingerprint": fingerprint, "complete": True, "n_shards": 1}))
    save_file({"embeddings": torch.randn(len(CAPTIONS), LENGTH, DIM, generator=g), "uncond": torch.zeros(1, LENGTH, DIM)}, str(text_dir / "embeddings.safetensors"))
    (text_dir / "index.jsonl").write_text("".join(json.dumps({"caption": c, "row": i}) + "\n" for i, c in enumerate(CAPTIONS)))
    (text_dir / "meta.json").write_text(json.dumps({"encoder": "tiny-clip", "mode": "pathldm", "max_length": LENGTH, "dim": DIM, "fingerprint": "t" * 8}))
    cases = [f"case{i % 4}" for i in range(n)]
    pq.write_table(pa.table({"patch_id": ids, "case_id": cases, "caption": [CAPTIONS[int(w)] for w in which]}), root / "captions.parquet")
    (root / "split.json").write_text(json.dumps({"cases": {"train": ["case0", "case1", "case2", "case3"], "test": []}}))
    return {"latents": str(lat_dir), "text_cache": str(text_dir), "captions": str(root / "captions.parquet"), "split": str(root / "split.json")}


def _config(tmp_path: Path, data: dict, **overrides) -> TrainConfig:
    from histoldm.config import deep_merge, read_yaml

    raw = deep_merge(read_yaml(CONFIGS / "train_tiny.yaml"), {"runs_dir": str(tmp_path / "runs"), "data": data})
    return TrainConfig.model_validate(deep_merge(raw, overrides))


def _stats(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box OpenMP spinning costs 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return _write_caches(tmp_path_factory.mktemp("caches"))


def test_loss_falls_and_bundle_is_exported(tmp_path, caches):
    cfg = _config(tmp_path, caches, max_steps=80, log_every=20, checkpoint_every=1000, batch_size=8, ema=False, optim={"lr": 2e-3})
    result = run_train(cfg)
    stats = _stats(result["run_dir"])
    assert stats[-1]["loss"] < 0.6 * stats[0]["loss"], stats
    meta = read_bundle_meta(Path(result["bundle"]))
    assert (meta.text.dim, meta.latent.fingerprint, meta.trained_steps) == (DIM, "synthetic-ae", 80)
    manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())
    assert manifest["peak_memory"]["allocated_gib"] is None and "CPU" in manifest["peak_memory"]["reason"]
    assert Path(result["run_dir"]).name == "00000-tiny" and (Path(result["run_dir"]) / "tb").is_dir()


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, caches):
    straight = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "a"), max_steps=12, checkpoint_every=6, grad_accum=2))
    run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "b"), max_steps=6, checkpoint_every=6, grad_accum=2))
    resumed = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "b"), max_steps=12, checkpoint_every=6, grad_accum=2, resume="latest"))
    assert resumed["steps"] == 12
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(Path(straight["run_dir"]) / "checkpoints" / "step-00000012" / name)
        b = load_file(Path(resumed["run_dir"]) / "checkpoints" / "step-00000012" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _stats(straight["run_dir"])[-1]["loss"] == _stats(resumed["run_dir"])[-1]["loss"]


def test_interrupted_save_leaves_latest_valid_and_rerun_resumes(tmp_path, caches):
    first = run_train(_config(tmp_path, caches, max_steps=10, checkpoint_every=10))
    run_dir = Path(first["run_dir"])
    (run_dir / "manifest.json").unlink()  # as if killed before the end
    partial = run_dir / "checkpoints" / ".tmp-step-00000015"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"torn")
    (run_dir / "checkpoints" / "step-00000020").mkdir()  # renamed but never completed: no state.json
    assert read_latest(run_dir) == "step-00000010"
    again = run_train(_config(tmp_path, caches, max_steps=20, checkpoint_every=10))  # same name: resumes by itself
    assert again["run_dir"] == str(run_dir) and again["steps"] == 20
    assert read_latest(run_dir) == "step-00000020" and not partial.exists()
    assert (run_dir / "checkpoints" / "step-00000020" / "state.json").is_file()


def test_resume_logs_each_step_once_and_refuses_other_caches(tmp_path, caches):
    run = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "r"), max_steps=8, checkpoint_every=4, log_every=2, keep_checkpoints=3))
    run_dir = Path(run["run_dir"])
    # as if killed after logging step 8 but before its checkpoint completed
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "step-00000008")
    (run_dir / "latest").write_text("step-00000004\n")
    (run_dir / "manifest.json").unlink()
    other_text = _write_caches(tmp_path / "other")
    meta = Path(other_text["text_cache"]) / "meta.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"fingerprint": "another-encoder"}))
    with pytest.raises(UserError, match="another text_cache"):
        run_train(_config(tmp_path, {**caches, "text_cache": other_text["text_cache"]}, run_dir=str(run_dir), max_steps=8,
                          checkpoint_every=4, log_every=2, keep_checkpoints=3))
    with pytest.raises(UserError, match="another model"):
        run_train(_config(tmp_path, caches, run_dir=str(run_dir), max_steps=8, checkpoint_every=4, log_every=2,
                          keep_checkpoints=3, model={"prediction_type": "v_prediction"}))
    again = run_train(_config(tmp_path, caches, run_dir=str(run_dir), max_steps=8, checkpoint_every=4, log_every=2, keep_checkpoints=3))
    assert again["steps"] == 8 and [r["step"] for r in _stats(again["run_dir"])] == [2, 4, 6, 8]


def test_resumed_optimizer_moments_take_their_parameters_layout():
    """channels_last weights: fused AdamW on CUDA needs moments with the same strides after a resume."""
    from histoldm.train.checkpoint import _match_parameter_layout

    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(1, 3, 5, 5)).sum().backward()
    opt.step()
    opt.load_state_dict({**opt.state_dict(), "state": {i: {k: v.contiguous() if torch.is_tensor(v) else v for k, v in st.items()}
                                                      for i, st in opt.state_dict()["state"].items()}})
    assert opt.state[conv.weight]["exp_avg"].stride() != conv.weight.stride()
    _match_parameter_layout(opt)
    assert all(opt.state[conv.weight][k].stride() == conv.weight.stride() for k in ("exp_avg", "exp_avg_sq"))


def test_bad_inputs_fail_before_compute(tmp_path, caches):
    with pytest.raises(UserError, match="context_dim"):
        run_train(_config(tmp_path, caches, model={"context_dim": DIM + 1}))
    with pytest.raises(UserError, match="another autoencoder"):
        run_train(_config(tmp_path, caches, model={"autoencoder": "kl-f4-tiny"}))
    with pytest.raises(UserError, match="no checkpoint"):
        run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "fresh"), resume="latest"))
    with pytest.raises(UserError, match="not a complete checkpoint"):
        run_train(_config(tmp_path, caches, resume=str(tmp_path / "nowhere")))
    with pytest.raises(UserError, match="fp16"):
        run_train(_config(tmp_path, caches, precision="fp16"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caches):
    first = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "r"), max_steps=5, checkpoint_every=5))
    poisoned = _write_caches(tmp_path / "poisoned")  # same patch ids and fingerprint, infinite latents
    np.save(Path(poisoned["latents"]) / "latents-00000.npy", np.full((48, 3, SIZE, SIZE), np.inf, np.float16))
    with pytest.raises(UserError, match="NaN"):
        run_train(_config(tmp_path, poisoned, run_dir=str(tmp_path / "r"), max_steps=10, checkpoint_every=10))
    assert read_latest(Path(first["run_dir"])) == "step-00000005"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path, caches):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text((CONFIGS / "train_tiny.yaml").read_text())
    sets = [f"data.{k}={v}" for k, v in caches.items()] + [f"run_dir={tmp_path / 'ddp'}", "max_steps=4", "log_every=2", "checkpoint_every=4"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "histoldm.cli", "train", "--config", str(cfg)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and read_latest(tmp_path / "ddp") == "step-00000004"


def _write_store(root: Path, n: int = 6, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rel = f"patches/s{i % 2}/q{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / rel)
        rows.append({"patch_id": f"q{i}", "slide_id": f"s{i % 2}", "case_id": f"c{i % 3}", "path": rel})
    rows.append({"patch_id": "broken", "slide_id": "s0", "case_id": "c0", "path": "patches/missing.png"})
    pq.write_table(pa.Table.from_pylist(rows), root / "patches.parquet")
    return root


def test_encode_latents_round_trip_and_resume(tmp_path, capsys):
    from histoldm.models.autoencoder import decode, encode, load_autoencoder
    from histoldm.train.latents import LatentCache

    store = _write_store(tmp_path / "store")
    out = tmp_path / "lat"
    args = ["encode-latents", str(store), "--vae", "kl-f4-tiny", "--out", str(out), "--batch-size", "4", "--set", "shard_size=4", "--set", "workers=0"]
    assert main(args) == 0
    cache = LatentCache.open(out)
    assert len(cache) == 6 and cache.meta["size"] == 8 and cache.meta["channels"] == 3
    assert json.loads((out / "manifest.json").read_text())["skipped"][0]["patch_id"] == "broken"
    ae = load_autoencoder("kl-f4-tiny")
    assert cache.meta["fingerprint"] == ae.fingerprint
    image = torch.from_numpy(np.asarray(Image.open(store / "patches/s1/q3.png"), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        expected = encode(ae, image)[0] * cache.meta["scaling_factor"]
        got = torch.from_numpy(np.array(cache[cache.positions()["q3"]], dtype=np.float32))
        assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max())
        assert decode(ae, got[None] / cache.meta["scaling_factor"]).shape == (1, 3, 32, 32)
    # A re-run skips the finished shards (their files are left untouched).
    mtime = (out / "latents-00000.npy").stat().st_mtime_ns
    assert main(args) == 0 and (out / "latents-00000.npy").stat().st_mtime_ns == mtime
    assert main(["encode-latents", str(store), "--vae", str(tmp_path / "no-such-vae"), "--out", str(out)]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["encode-latents", str(store), "--vae", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "config.json missing" in capsys.readouterr().err


def test_train_vae_a_few_steps(tmp_path, capsys):
    from histoldm.models.autoencoder import load_autoencoder

    store = _write_store(tmp_path / "store", n=8)
    out = tmp_path / "vae"
    assert main(["train-vae", str(store), "--out", str(out), "--init", "kl-f4-tiny", "--steps", "3", "--batch-size", "2",
                 "--set", "holdout_patches=2", "--set", "workers=0", "--set", "log_every=1", "--set", "checkpoint_every=2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] >= 2 and metrics["psnr"] > 0 and -1 <= metrics["ssim"] <= 1
    assert load_autoencoder(str(out / "autoencoder")).kind == "kl"
    assert read_latest(out) == "step-00000003" and not (out / "checkpoints" / "step-00000002").exists()  # rotated
    # more steps resume; other training settings would overwrite this autoencoder with a mix of two
    assert main(["train-vae", str(store), "--out", str(out), "--init", "kl-f4-tiny", "--steps", "4", "--batch-size", "2",
                 "--set", "lr=0.01", "--set", "holdout_patches=2", "--set", "workers=0"]) == 2
    assert "other lr" in capsys.readouterr().err


def test_train_vae_preload_feeds_the_same_batches_as_the_loader(tmp_path):
    """`preload` (the demo's data path) decodes once; every batch, the unreadable patch included, is the loader's."""
    from histoldm.train.data import ResumableSampler
    from histoldm.train.vae import TrainVAEConfig, _batches

    store = _write_store(tmp_path / "store", n=8)
    paths = [store / p for p in pq.read_table(store / "patches.parquet").column("path").to_pylist()]
    cfg = TrainVAEConfig(store=store, out=tmp_path / "vae", workers=0, image_size=16)
    loader = _batches(paths, ResumableSampler(len(paths), 3, seed=0), cfg)
    preloaded = _batches(paths, ResumableSampler(len(paths), 3, seed=0), cfg.model_copy(update={"preload": True}))
    seen_broken = False
    for _ in range(7):  # over two epochs
        for (a, ok_a, err_a), (b, ok_b, err_b) in zip(next(loader), next(preloaded), strict=True):
            assert ok_a == ok_b and err_a == err_b and torch.equal(a, b)
            seen_broken |= not ok_a
    assert seen_broken


def test_train_vae_stops_on_nan_before_saving_it(tmp_path, capsys):
    """A diverging autoencoder run exits with one line; no checkpoint it leaves holds non-finite weights."""
    from safetensors.torch import load_file

    store = _write_store(tmp_path / "store", n=8)
    out = tmp_path / "vae"
    assert main(["train-vae", str(store), "--out", str(out), "--init", "kl-f4-tiny", "--steps", "6", "--batch-size", "2",
                 "--set", "lr=1e30", "--set", "holdout_patches=2", "--set", "workers=0", "--set", "log_every=100",
                 "--set", "checkpoint_every=1"]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    for weights in (out / "checkpoints").rglob("model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_train_vae_holds_out_the_split_cases(tmp_path):
    """With a split, the autoencoder never trains on held-out cases: PSNR is measured on exactly them."""
    store = _write_store(tmp_path / "store", n=9)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"cases": {"train": ["c0", "c1"], "test": ["c2"]}}))
    out = tmp_path / "vae"
    assert main(["train-vae", str(store), "--out", str(out), "--init", "kl-f4-tiny", "--steps", "1", "--batch-size", "2",
                 "--set", f"split={split}", "--set", "workers=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and "split" in metrics["held_out_cases_by"]  # the 3 patches of case c2


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train", "--config", str(CONFIGS / "pathldm.yaml"), "--dry-run", "--set", "max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and "unet_preset: pathldm" in out


def test_objective_targets_match_diffusers_and_min_snr_weights():
    from histoldm.models.schedule import ddpm_scheduler
    from histoldm.train.objective import DiffusionObjective

    captured = {}

    def fake_unet(noisy, t, encoder_hidden_states, return_dict):  # records what the UNet would see
        captured.update(noisy=noisy, t=t)
        return (torch.zeros_like(noisy),)

    x0 = torch.randn(4, 3, 8, 8)
    for prediction in ("epsilon", "v_prediction"):
        objective = DiffusionObjective(prediction, None, torch.device("cpu"))
        loss = objective.loss(fake_unet, x0, torch.zeros(4, 2, 16), torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)
        t = torch.randint(0, 1000, (4,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        scheduler = ddpm_scheduler(prediction)
        assert torch.allclose(captured["noisy"], scheduler.add_noise(x0, noise, t), atol=1e-5)
        target = noise if prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
        assert torch.allclose(loss, target.pow(2).mean(), atol=1e-5)
    snr_weighted = DiffusionObjective("epsilon", 5.0, torch.device("cpu")).weights(torch.tensor([0, 999]))
    assert snr_weighted[0] < 1.0 and snr_weighted[1] == 1.0  # low noise (high SNR) is down-weighted


def test_latent_augmentation_dropout_and_sampler():
    from histoldm.train.data import ResumableSampler, augment_dihedral, drop_captions

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(512, 1, 1, 1)
    out = augment_dihedral(x, torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # all symmetries of the square occur
    flips = augment_dihedral(x, torch.Generator().manual_seed(0), transpose=False)
    assert len({tuple(o.flatten().tolist()) for o in flips}) == 4
    rows = drop_captions(torch.zeros(10000, dtype=torch.long), 7, 0.1, torch.Generator().manual_seed(0))
    assert 0.08 < (rows == 7).float().mean() < 0.12 and set(rows.unique().tolist()) == {0, 7}
    ranks = [ResumableSampler(20, 3, seed=4, rank=r, world=2) for r in (0, 1)]
    first = [[b for _, b in zip(range(3), iter(s))] for s in ranks]
    assert not set(sum(first[0], [])) & set(sum(first[1], []))  # ranks see disjoint patches in an epoch
    resumed = ResumableSampler(20, 3, seed=4, rank=0, world=2, start=2)
    assert next(iter(resumed)) == first[0][2]


def test_validation_grid_needs_the_caches_autoencoder(tmp_path):
    from histoldm.models.autoencoder import load_autoencoder

    data = _write_caches(tmp_path / "c", fingerprint=load_autoencoder("kl-f4-tiny").fingerprint)
    grid = {"every": 3, "autoencoder": "kl-f4-tiny", "n": 2, "steps": 2}
    result = run_train(_config(tmp_path, data, max_steps=3, validation=grid))
    with Image.open(Path(result["run_dir"]) / "validation" / "step-00000003.png") as im:
        assert im.size == (2 * 4 * SIZE, 4 * SIZE)  # f = 4 autoencoder, captions side by side
    with pytest.raises(UserError, match="not the autoencoder"):
        run_train(_config(tmp_path, _write_caches(tmp_path / "d"), max_steps=3, validation=grid))


def test_encode_latents_resizes_patches_when_asked(tmp_path):
    """A model may work below the stored resolution: 32 px patches encoded at 16 px give 4x4 latents."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from histoldm.train.latents import EncodeLatentsConfig, LatentCache, run_encode_latents

    store = tmp_path / "store"
    (store / "patches").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(store / "patches" / f"p{i}.png")
        rows.append({"patch_id": f"p{i}", "case_id": "c", "path": f"patches/p{i}.png"})
    pq.write_table(pa.Table.from_pylist(rows), store / "patches.parquet")
    run_encode_latents(EncodeLatentsConfig(store=store, vae="kl-f4-tiny", out=tmp_path / "lat", device="cpu", workers=0, image_size=16))
    cache = LatentCache.open(tmp_path / "lat")
    assert cache.meta["image_size"] == 16 and cache.meta["size"] == 4

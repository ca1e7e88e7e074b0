"""Autoencoder, latent cache and LDM training on CPU with tiny models and synthetic caches."""

import functools
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

from builders import write_patch_store
from histoldm.cli import main
from histoldm.config_files import SHIPPED_DIR
from histoldm.errors import UserError
from histoldm.models.bundle import read_bundle_meta
from histoldm.train.checkpoint import read_latest
from histoldm.train.config import TrainConfig
from histoldm.train.lr_schedule import lr_factor
from histoldm.train.trainer import run_train

CONFIGS = SHIPPED_DIR
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
    pq.write_table(
        pa.table({"patch_id": ids, "shard": pa.array([0] * n, pa.int32()), "row": pa.array(range(n), pa.int32())}),
        lat_dir / "index.parquet",
    )
    (lat_dir / "meta.json").write_text(
        json.dumps(
            {
                "autoencoder": "synthetic",
                "kind": "kl",
                "scaling_factor": 1.0,
                "channels": 3,
                "size": SIZE,
                "fingerprint": fingerprint,
                "complete": True,
                "n_shards": 1,
            }
        )
    )
    save_file(
        {"embeddings": torch.randn(len(CAPTIONS), LENGTH, DIM, generator=g), "uncond": torch.zeros(1, LENGTH, DIM)},
        str(text_dir / "embeddings.safetensors"),
    )
    (text_dir / "index.jsonl").write_text(
        "".join(json.dumps({"caption": c, "row": i}) + "\n" for i, c in enumerate(CAPTIONS))
    )
    (text_dir / "meta.json").write_text(
        json.dumps(
            {"encoder": "tiny-clip", "mode": "pathldm", "max_length": LENGTH, "dim": DIM, "fingerprint": "t" * 8}
        )
    )
    cases = [f"case{i % 4}" for i in range(n)]
    pq.write_table(
        pa.table({"patch_id": ids, "case_id": cases, "caption": [CAPTIONS[int(w)] for w in which]}),
        root / "captions.parquet",
    )
    (root / "split.json").write_text(json.dumps({"cases": {"train": ["case0", "case1", "case2", "case3"], "test": []}}))
    return {
        "latents": str(lat_dir),
        "text_cache": str(text_dir),
        "captions": str(root / "captions.parquet"),
        "split": str(root / "split.json"),
    }


def _config(tmp_path: Path, data: dict, **overrides) -> TrainConfig:
    from histoldm.config import deep_merge, read_yaml

    raw = deep_merge(read_yaml(CONFIGS / "train_tiny.yaml"), {"runs_dir": str(tmp_path / "runs"), "data": data})
    return TrainConfig.model_validate(deep_merge(raw, overrides))


def _stats(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return _write_caches(tmp_path_factory.mktemp("caches"))


def test_loss_falls_and_bundle_is_exported(tmp_path, caches):
    cfg = _config(
        tmp_path, caches, max_steps=80, log_every=20, checkpoint_every=1000, batch_size=8, ema=False, optim={"lr": 2e-3}
    )
    result = run_train(cfg)
    stats = _stats(result.run_dir)
    assert stats[-1]["loss"] < 0.6 * stats[0]["loss"], stats
    meta = read_bundle_meta(Path(result.bundle))
    assert (meta.text.dim, meta.latent.fingerprint, meta.trained_steps) == (DIM, "synthetic-ae", 80)
    manifest = json.loads((Path(result.run_dir) / "manifest.json").read_text())
    assert manifest["peak_memory"]["allocated_gib"] is None and "CPU" in manifest["peak_memory"]["reason"]
    assert Path(result.run_dir).name == "00000-tiny" and (Path(result.run_dir) / "tb").is_dir()


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, caches):
    straight = run_train(
        _config(tmp_path, caches, run_dir=str(tmp_path / "a"), max_steps=12, checkpoint_every=6, grad_accum=2)
    )
    run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "b"), max_steps=6, checkpoint_every=6, grad_accum=2))
    resumed = run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "b"),
            max_steps=12,
            checkpoint_every=6,
            grad_accum=2,
            resume="latest",
        )
    )
    assert resumed.steps == 12
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(Path(straight.run_dir) / "checkpoints" / "step-00000012" / name)
        b = load_file(Path(resumed.run_dir) / "checkpoints" / "step-00000012" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _stats(straight.run_dir)[-1]["loss"] == _stats(resumed.run_dir)[-1]["loss"]


def _nhwc(model: torch.nn.Module) -> bool:
    """Whether the model's first 3x3 convolution holds its weight channels_last (1x1 kernels are both layouts)."""
    weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _spy(monkeypatch, module, name: str) -> list:
    """Record the models `module.name` builds (the real ones, trained as usual)."""
    built, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    return built


def test_channels_last_is_the_cpu_default_and_trains_the_same_model(tmp_path, caches, monkeypatch):
    """NHWC on CPU (faster there, docs/performance.md) is a memory layout, not other math: the default run
    is the channels_last run bit for bit, and the NCHW run matches it up to float rounding."""
    import histoldm.train.trainer

    built = _spy(monkeypatch, histoldm.train.trainer, "build_unet")
    runs = {
        name: run_train(
            _config(
                tmp_path,
                caches,
                run_dir=str(tmp_path / name),
                max_steps=8,
                checkpoint_every=8,
                model={"channels_last": flag},
            )
        )
        for name, flag in (("default", None), ("nhwc", True), ("nchw", False))
    }
    assert [_nhwc(m) for m in built] == [True, True, False]
    weights = {
        name: load_file(r.run_dir / "checkpoints" / "step-00000008" / "model.safetensors") for name, r in runs.items()
    }
    assert all(torch.equal(weights["default"][k], weights["nhwc"][k]) for k in weights["nhwc"])
    assert all(torch.allclose(weights["nchw"][k], weights["nhwc"][k], rtol=1e-3, atol=1e-4) for k in weights["nhwc"])
    losses = {name: _stats(r.run_dir)[-1]["loss"] for name, r in runs.items()}
    assert losses["nchw"] == pytest.approx(losses["nhwc"], rel=1e-4)


def test_interrupted_save_leaves_latest_valid_and_rerun_resumes(tmp_path, caches):
    first = run_train(_config(tmp_path, caches, max_steps=10, checkpoint_every=10))
    run_dir = Path(first.run_dir)
    (run_dir / "manifest.json").unlink()  # as if killed before the end
    partial = run_dir / "checkpoints" / ".tmp-step-00000015"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"torn")
    (run_dir / "checkpoints" / "step-00000020").mkdir()  # renamed but never completed: no state.json
    assert read_latest(run_dir) == "step-00000010"
    again = run_train(_config(tmp_path, caches, max_steps=20, checkpoint_every=10))  # same name: resumes by itself
    assert again.run_dir == run_dir and again.steps == 20
    assert read_latest(run_dir) == "step-00000020" and not partial.exists()
    assert (run_dir / "checkpoints" / "step-00000020" / "state.json").is_file()


def test_resume_logs_each_step_once_and_refuses_other_caches(tmp_path, caches):
    run = run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "r"),
            max_steps=8,
            checkpoint_every=4,
            log_every=2,
            keep_checkpoints=3,
        )
    )
    run_dir = Path(run.run_dir)
    # as if killed after logging step 8 but before its checkpoint completed
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "step-00000008")
    (run_dir / "latest").write_text("step-00000004\n")
    (run_dir / "manifest.json").unlink()
    other_text = _write_caches(tmp_path / "other")
    meta = Path(other_text["text_cache"]) / "meta.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"fingerprint": "another-encoder"}))
    with pytest.raises(UserError, match="other caches than the run was trained with .text_cache.fingerprint"):
        run_train(
            _config(
                tmp_path,
                {**caches, "text_cache": other_text["text_cache"]},
                run_dir=str(run_dir),
                max_steps=8,
                checkpoint_every=4,
                log_every=2,
                keep_checkpoints=3,
            )
        )
    with pytest.raises(UserError, match="another model .* .model.prediction_type epsilon -> v_prediction"):
        run_train(
            _config(
                tmp_path,
                caches,
                run_dir=str(run_dir),
                max_steps=8,
                checkpoint_every=4,
                log_every=2,
                keep_checkpoints=3,
                model={"prediction_type": "v_prediction"},
            )
        )
    again = run_train(
        _config(
            tmp_path, caches, run_dir=str(run_dir), max_steps=8, checkpoint_every=4, log_every=2, keep_checkpoints=3
        )
    )
    assert again.steps == 8 and [r["step"] for r in _stats(again.run_dir)] == [2, 4, 6, 8]


def _warmup_run(lr: float, warmup: int):
    """A tiny model, AdamW and the trainer's warm-up schedule, as run_train builds them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, warmup, "constant", 100))
    return model, opt, sched


def test_lr_factor_warms_up_then_holds_or_follows_a_cosine_to_zero():
    assert [lr_factor(4, "constant", 100, s) for s in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]
    cosine = [lr_factor(4, "cosine", 104, s) for s in (0, 3, 4, 54, 104)]
    assert (
        cosine[:3] == [0.25, 1.0, 1.0]
        and cosine[3] == pytest.approx(0.5)
        and cosine[4] == pytest.approx(0.0, abs=1e-12)
    )
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:]))


def test_cosine_decay_reaches_zero_at_max_steps_and_resume_reports_a_new_end(tmp_path, caches, capsys):
    run = run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "r"),
            max_steps=6,
            checkpoint_every=3,
            log_every=1,
            optim={"lr": 1e-3, "warmup_steps": 2, "decay": "cosine"},
        )
    )
    lrs = [r["lr"] for r in _stats(run.run_dir)]  # the lr each logged step leaves for the next one
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    capsys.readouterr()
    run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "r"),
            max_steps=10,
            checkpoint_every=10,
            log_every=1,
            resume="latest",
            optim={"lr": 1e-3, "warmup_steps": 2, "decay": "cosine"},
        )
    )
    assert "optim.decay_end_step 6 -> 10" in capsys.readouterr().out


def test_resume_applies_the_configs_optimizer_settings_from_the_next_step(tmp_path):
    """A resumed run keeps the moments and the schedule's position but runs with the config's peak lr,
    weight decay and warm-up; an unchanged config restores the exact lr and reports nothing."""
    from histoldm.train.checkpoint import load_checkpoint, save_checkpoint

    model, opt, sched = _warmup_run(1e-3, warmup=10)
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    save_checkpoint(
        tmp_path,
        3,
        model=model,
        ema=None,
        optimizer=opt,
        lr_scheduler=sched,
        scaler=None,
        data_position=3,
        keep=1,
        schedule={"warmup_steps": 10},
    )
    ckpt = tmp_path / "checkpoints" / "step-00000003"

    same_model, same_opt, same_sched = _warmup_run(1e-3, warmup=10)
    state = load_checkpoint(
        ckpt,
        model=same_model,
        ema=None,
        optimizer=same_opt,
        lr_scheduler=same_sched,
        scaler=None,
        schedule={"warmup_steps": 10},
    )
    assert state["optimizer_changes"] == {}
    assert same_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 1e-3 * 4 / 10
    assert torch.equal(same_opt.state[same_model.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])

    new_model, new_opt, new_sched = _warmup_run(1e-4, warmup=5)
    new_opt.param_groups[0]["weight_decay"] = 0.0
    state = load_checkpoint(
        ckpt,
        model=new_model,
        ema=None,
        optimizer=new_opt,
        lr_scheduler=new_sched,
        scaler=None,
        schedule={"warmup_steps": 5},
    )
    assert state["optimizer_changes"] == {"lr": [1e-3, 1e-4], "weight_decay": [0.01, 0.0], "warmup_steps": [10, 5]}
    group = new_opt.param_groups[0]
    assert (
        group["lr"] == pytest.approx(1e-4 * 4 / 5) and group["weight_decay"] == 0.0
    )  # in effect for the next optimizer step
    assert new_sched.get_last_lr() == [group["lr"]]
    assert torch.equal(new_opt.state[new_model.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])  # moments kept
    new_sched.step()  # the schedule continues from step 3 with the new peak
    assert group["lr"] == pytest.approx(1e-4)


def test_resumed_run_says_which_optimizer_settings_changed(tmp_path, caches, capsys):
    run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "r"),
            max_steps=4,
            checkpoint_every=4,
            log_every=1,
            optim={"lr": 1e-3, "warmup_steps": 10},
        )
    )
    capsys.readouterr()
    resumed = run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "r"),
            max_steps=6,
            checkpoint_every=6,
            log_every=1,
            resume="latest",
            optim={"lr": 2e-4, "warmup_steps": 10},
        )
    )
    assert "optim.lr 0.001 -> 0.0002" in capsys.readouterr().out
    manifest = json.loads((Path(resumed.run_dir) / "manifest.json").read_text())
    assert manifest["optimizer_changes_on_resume"] == {"lr": [1e-3, 2e-4]}
    lrs = {r["step"]: r["lr"] for r in _stats(resumed.run_dir)}  # the lr each logged step leaves for the next one
    assert lrs[4] == pytest.approx(1e-3 * 5 / 10) and lrs[5] == pytest.approx(2e-4 * 6 / 10)
    state = json.loads((Path(resumed.run_dir) / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["optimizer_param_groups"][0]["initial_lr"] == 2e-4 and state["optimizer_settings"]["lr"] == 2e-4


def test_resumed_optimizer_moments_take_their_parameters_layout():
    """channels_last weights: fused AdamW on CUDA needs moments with the same strides after a resume."""
    from histoldm.train.checkpoint import _match_parameter_layout

    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters())
    conv(torch.randn(1, 3, 5, 5)).sum().backward()
    opt.step()
    opt.load_state_dict(
        {
            **opt.state_dict(),
            "state": {
                i: {k: v.contiguous() if torch.is_tensor(v) else v for k, v in st.items()}
                for i, st in opt.state_dict()["state"].items()
            },
        }
    )
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
    with pytest.raises(UserError, match="train precision float16: training in float16 needs a GPU"):
        run_train(_config(tmp_path, caches, precision="fp16"))  # the old spelling, read as float16
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_bf16_on_a_gpu_without_it_is_refused_before_any_compute(tmp_path, caches, monkeypatch):
    """A CUDA card without bf16 (simulated: only torch.cuda's answers change, in this test only)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(UserError, match=r"^train precision bfloat16: not supported by Tesla T4; use float32"):
        run_train(_config(tmp_path, caches, precision="bf16"))
    assert not (tmp_path / "runs").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caches):
    first = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "r"), max_steps=5, checkpoint_every=5))
    poisoned = _write_caches(tmp_path / "poisoned")  # same patch ids and fingerprint, infinite latents
    np.save(Path(poisoned["latents"]) / "latents-00000.npy", np.full((48, 3, SIZE, SIZE), np.inf, np.float16))
    with pytest.raises(UserError, match="NaN"):
        run_train(_config(tmp_path, poisoned, run_dir=str(tmp_path / "r"), max_steps=10, checkpoint_every=10))
    assert read_latest(Path(first.run_dir)) == "step-00000005"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tmp_path, caches):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text((CONFIGS / "train_tiny.yaml").read_text())
    sets = [f"data.{k}={v}" for k, v in caches.items()] + [
        f"run_dir={tmp_path / 'ddp'}",
        "max_steps=4",
        "log_every=2",
        "checkpoint_every=4",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "histoldm.cli",
        "train",
        "--config",
        str(cfg),
    ]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and read_latest(tmp_path / "ddp") == "step-00000004"


def test_encode_latents_round_trip_and_resume(tmp_path, capsys):
    from histoldm.models.autoencoder import decode, encode, load_autoencoder
    from histoldm.train.latents import LatentCache

    store = write_patch_store(tmp_path / "store")
    out = tmp_path / "lat"
    args = [
        "encode-latents",
        str(store),
        "--vae",
        "kl-f4-tiny",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--set",
        "shard_size=4",
        "--set",
        "workers=0",
    ]
    assert main(args) == 0
    cache = LatentCache.open(out)
    assert len(cache) == 6 and cache.meta["size"] == 8 and cache.meta["channels"] == 3
    assert json.loads((out / "manifest.json").read_text())["skipped"][0]["patch_id"] == "broken"
    ae = load_autoencoder("kl-f4-tiny")
    assert cache.meta["fingerprint"] == ae.fingerprint
    image = (
        torch.from_numpy(np.asarray(Image.open(store / "patches/s1/q3.png"), dtype=np.float32)).permute(2, 0, 1)[None]
        / 127.5
        - 1
    )
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


def test_encode_latents_in_two_processes_writes_the_single_process_cache(tmp_path):
    """Process i of N encodes shards i, i+N, ...; run here rank by rank (what `accelerate launch` runs at
    once, with barriers between): rank 0 plans and measures the KL scale, rank 1 follows, and the
    finished cache is the single process's, file for file. A rank that ends alone leaves it resumable."""
    from histoldm.devices import Processes
    from histoldm.train.config import EncodeLatentsConfig
    from histoldm.train.latents import LatentCache, run_encode_latents

    store = write_patch_store(tmp_path / "store")
    cfg = EncodeLatentsConfig(
        store=store, vae="kl-f4-tiny", out=tmp_path / "one", batch_size=2, shard_size=2, device="cpu", workers=0
    )
    one = run_encode_latents(cfg)
    sharded = cfg.model_copy(update={"out": tmp_path / "two"})
    ranks = [Processes(r, 2, torch.device("cpu"), lambda: None) for r in (0, 1)]
    first = run_encode_latents(sharded, ranks[0])
    assert first.shards_missing == 2  # shards 1 and 3 are rank 1's
    assert sorted(p.name for p in (tmp_path / "two").glob("latents-*.npy")) == [
        "latents-00000.npy",
        "latents-00002.npy",
    ]
    assert run_encode_latents(sharded, ranks[1]) is None  # its shards written, the main process finishes
    finished = run_encode_latents(sharded)  # a plain re-run finds every shard done and writes the index
    assert finished.latents == one.latents == 6 and finished.scaling_factor == one.scaling_factor
    for path in sorted((tmp_path / "one").glob("latents-*")) + [tmp_path / "one" / "index.parquet"]:
        assert (tmp_path / "two" / path.name).read_bytes() == path.read_bytes(), path.name
    assert len(LatentCache.open(tmp_path / "two")) == 6


def test_train_vae_a_few_steps(tmp_path, capsys):
    from histoldm.models.autoencoder import load_autoencoder

    store = write_patch_store(tmp_path / "store", n=8)
    out = tmp_path / "vae"
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(out),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--set",
                "holdout_patches=2",
                "--set",
                "workers=0",
                "--set",
                "log_every=1",
                "--set",
                "checkpoint_every=2",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] >= 2 and metrics["psnr"] > 0 and -1 <= metrics["ssim"] <= 1
    assert load_autoencoder(str(out / "autoencoder")).kind == "kl"
    assert read_latest(out) == "step-00000003" and not (out / "checkpoints" / "step-00000002").exists()  # rotated
    # more steps resume; other training settings would overwrite this autoencoder with a mix of two
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(out),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "4",
                "--batch-size",
                "2",
                "--set",
                "kl_weight=0.01",
                "--set",
                "holdout_patches=2",
                "--set",
                "workers=0",
            ]
        )
        == 2
    )
    assert "other kl_weight" in capsys.readouterr().err
    # a changed lr is applied from the resumed step on, and said
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(out),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "4",
                "--batch-size",
                "2",
                "--set",
                "lr=1e-5",
                "--set",
                "holdout_patches=2",
                "--set",
                "workers=0",
            ]
        )
        == 0
    )
    assert "lr 0.0001 -> 1e-05" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["optimizer_changes_on_resume"] == {"lr": [1e-4, 1e-5]}
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["optimizer_param_groups"][0]["lr"] == 1e-5
    # a cosine decay from the resumed step on ends at lr 0 at the last step
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(out),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "6",
                "--batch-size",
                "2",
                "--decay",
                "cosine",
                "--set",
                "lr=1e-5",
                "--set",
                "holdout_patches=2",
                "--set",
                "workers=0",
            ]
        )
        == 0
    )
    assert "decay constant -> cosine" in capsys.readouterr().out
    state = json.loads((out / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["optimizer_param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-15)


def test_train_vae_preload_feeds_the_same_batches_as_the_loader(tmp_path):
    """`preload` (the demo's data path) decodes once; every batch, the unreadable patch included, is the loader's."""
    from histoldm.train.config import TrainVAEConfig
    from histoldm.train.data import ResumableSampler
    from histoldm.train.vae import _batches

    store = write_patch_store(tmp_path / "store", n=8)
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


def test_train_vae_channels_last_is_the_cpu_default_and_trains_the_same_model(tmp_path, monkeypatch):
    """The autoencoder's NHWC layout on CPU: the default is it bit for bit, NCHW agrees up to rounding,
    and the saved weights are contiguous (safetensors needs that)."""
    import histoldm.train.vae
    from histoldm.train.config import TrainVAEConfig
    from histoldm.train.vae import run_train_vae

    layouts, step = [], histoldm.train.vae._train_step  # the model's layout while it trains (it is saved NCHW)
    monkeypatch.setattr(
        histoldm.train.vae, "_train_step", lambda model, *a: layouts.append(_nhwc(model)) or step(model, *a)
    )
    store = write_patch_store(tmp_path / "store", n=8)
    base = TrainVAEConfig(
        store=store, out=tmp_path / "x", init="kl-f4-tiny", steps=3, batch_size=2, lr=1e-5, holdout_patches=2, workers=0
    )
    metrics, weights = {}, {}
    for name, flag in (("default", None), ("nhwc", True), ("nchw", False)):
        metrics[name] = run_train_vae(base.model_copy(update={"out": tmp_path / name, "channels_last": flag}))
        weights[name] = load_file(tmp_path / name / "autoencoder" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(weights["default"][k], weights["nhwc"][k]) for k in weights["nhwc"])
    assert all(torch.allclose(weights["nchw"][k], weights["nhwc"][k], rtol=1e-3, atol=1e-4) for k in weights["nhwc"])
    assert metrics["nchw"].psnr == pytest.approx(metrics["nhwc"].psnr, abs=1e-3)
    assert layouts == [True] * 3 + [True] * 3 + [False] * 3


def test_train_vae_stops_on_nan_before_saving_it(tmp_path, capsys):
    """A diverging autoencoder run exits with one line; no checkpoint it leaves holds non-finite weights."""
    from safetensors.torch import load_file

    store = write_patch_store(tmp_path / "store", n=8)
    out = tmp_path / "vae"
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(out),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "6",
                "--batch-size",
                "2",
                "--set",
                "lr=1e30",
                "--set",
                "holdout_patches=2",
                "--set",
                "workers=0",
                "--set",
                "log_every=100",
                "--set",
                "checkpoint_every=1",
            ]
        )
        == 2
    )
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    for weights in (out / "checkpoints").rglob("model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_train_vae_holds_out_the_split_cases(tmp_path):
    """With a split, the autoencoder never trains on held-out cases: PSNR is measured on exactly them."""
    store = write_patch_store(tmp_path / "store", n=9)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"cases": {"train": ["c0", "c1"], "test": ["c2"]}}))
    out = tmp_path / "vae"
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(out),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--set",
                f"split={split}",
                "--set",
                "workers=0",
            ]
        )
        == 0
    )
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


def test_random_streams_keep_their_numbers():
    """A stream's number seeds its generator: renumbering the streams would change every run's draws."""
    from histoldm.train.data import Stream

    assert {s.name: s.value for s in Stream} == {
        "NOISE": 0,
        "DROPOUT": 1,
        "CROP": 2,
        "CAPTION": 3,
        "CONSISTENCY": 4,
        "FLIPS": 5,
    }


def test_validation_grid_needs_the_caches_autoencoder(tmp_path):
    from histoldm.models.autoencoder import load_autoencoder

    data = _write_caches(tmp_path / "c", fingerprint=load_autoencoder("kl-f4-tiny").fingerprint)
    grid = {"every": 3, "autoencoder": "kl-f4-tiny", "n": 2, "steps": 2}
    result = run_train(_config(tmp_path, data, max_steps=3, validation=grid))
    with Image.open(Path(result.run_dir) / "validation" / "step-00000003.png") as im:
        assert im.size == (2 * 4 * SIZE, 4 * SIZE)  # f = 4 autoencoder, captions side by side
    with pytest.raises(UserError, match="not the autoencoder"):
        run_train(_config(tmp_path, _write_caches(tmp_path / "d"), max_steps=3, validation=grid))


def test_encode_latents_resizes_patches_when_asked(tmp_path):
    """A model may work below the stored resolution: 32 px patches encoded at 16 px give 4x4 latents."""
    from histoldm.train.config import EncodeLatentsConfig
    from histoldm.train.latents import LatentCache, run_encode_latents

    store = write_patch_store(tmp_path / "store", n=3, size=32, broken=False)
    run_encode_latents(
        EncodeLatentsConfig(store=store, vae="kl-f4-tiny", out=tmp_path / "lat", device="cpu", workers=0, image_size=16)
    )
    cache = LatentCache.open(tmp_path / "lat")
    assert cache.meta["image_size"] == 16 and cache.meta["size"] == 4


# ---------------------------------------------------------------- starting weights: model.init_from / model.init


def _compvis_unet(context_dim: int = DIM, seed: int = 0, preset: str = "tiny") -> dict[str, torch.Tensor]:
    """A CompVis openaimodel.UNetModel state dict for a preset, from the CompVis structure (test_convert)."""
    from test_convert import compvis_layout, random_state

    layout = compvis_layout(
        preset, "vq-f4-tiny", context_dim=context_dim, clip=dict(width=16, layers=1, intermediate=32)
    )
    return {
        k.removeprefix("model.diffusion_model."): v
        for k, v in random_state(layout, seed).items()
        if k.startswith("model.diffusion_model.")
    }


def _unet_at_step_0(tmp_path: Path, caches: dict, model: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The UNet a run starts with, built and initialised by the trainer's own code (seeded as run_train does)."""
    from accelerate.utils import set_seed

    from histoldm.models.presets import build_unet
    from histoldm.train.run_folder import initialise

    cfg = _config(tmp_path, caches, model=model)
    set_seed(cfg.seed)
    unet = build_unet(cfg.model.unet_preset, context_dim=DIM, latent_channels=3, sample_size=SIZE)
    report = initialise(unet, cfg.model, None, tmp_path / "unused")
    return unet.state_dict(), report


def _ours_from_compvis(unet_state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Our key -> CompVis UNet key for the tiny preset (the table convert-ldm's tests check independently)."""
    from histoldm.models import compvis_keys as ck
    from histoldm.models.presets import UNET_PRESETS

    tiny = UNET_PRESETS["tiny"]
    names = ck.unet_names(unet_state.keys(), tiny["layers_per_block"], tiny["up_block_types"])
    return names


def _train_args(tmp_path: Path, caches: dict, init_from: Path, *sets: str) -> list[str]:
    pairs = [f"runs_dir={tmp_path / 'runs'}", *(f"data.{k}={v}" for k, v in caches.items()), *sets]
    return [
        "train",
        "--config",
        str(CONFIGS / "train_tiny.yaml"),
        "--init-from",
        str(init_from),
        *(x for p in pairs for x in ("--set", p)),
    ]


@pytest.mark.parametrize("layout", ["latent-diffusion", "unet.ckpt"])
def test_init_from_compvis_checkpoint_is_bit_for_bit_then_trains(tmp_path, caches, layout):
    """cin256-v2's layout (UNet + ClassEmbedder + schedule buffers) and PathLDM's bare unet.ckpt: the UNet
    at step 0 is the checkpoint's, exactly; only the class embedder and the buffers are skipped; then it trains."""
    from test_convert import schedule_buffers

    unet_sd = _compvis_unet()
    if layout == "latent-diffusion":
        state = {f"model.diffusion_model.{k}": v for k, v in unet_sd.items()} | schedule_buffers()
        state["cond_stage_model.embedding.weight"] = torch.randn(
            1001, DIM
        )  # cin256-v2's ClassEmbedder (1000 classes + null)
    else:
        state = dict(unet_sd)
    ckpt = tmp_path / "unet.ckpt"
    torch.save({"state_dict": state}, ckpt)

    ours, init = _unet_at_step_0(tmp_path, caches, {"init_from": str(ckpt)})
    names = _ours_from_compvis(ours)
    assert set(names.values()) == set(unet_sd)  # every UNet tensor of the checkpoint is used
    assert all(torch.equal(ours[k], unet_sd[names[k]]) for k in ours)
    skipped = {s["key"]: s["reason"] for s in init["skipped"]}
    assert init["loaded"] == len(unet_sd) and init["kind"] == (
        "compvis" if layout == "latent-diffusion" else "compvis-unet"
    )
    assert init["sha256"] == __import__("hashlib").sha256(ckpt.read_bytes()).hexdigest()
    if layout == "latent-diffusion":
        assert [k for k, r in skipped.items() if r.startswith("class embedder")] == [
            "cond_stage_model.embedding.weight"
        ]
        assert set(skipped) == {"cond_stage_model.embedding.weight", *schedule_buffers()}
    else:
        assert skipped == {}

    trained = run_train(
        _config(
            tmp_path,
            caches,
            run_dir=str(tmp_path / "train"),
            max_steps=6,
            log_every=3,
            ema=False,
            model={"init_from": str(ckpt)},
        )
    )
    after = load_file(Path(trained.bundle) / "unet" / "diffusion_pytorch_model.safetensors")
    assert json.loads((Path(trained.run_dir) / "manifest.json").read_text())["init"] == init
    assert all(np.isfinite(r["loss"]) for r in _stats(trained.run_dir))
    assert not torch.equal(after["conv_in.weight"], ours["conv_in.weight"])


def test_resume_ignores_init_from_and_says_so(tmp_path, caches, capsys):
    ckpt = tmp_path / "unet.ckpt"
    torch.save({"state_dict": _compvis_unet()}, ckpt)
    run_dir = str(tmp_path / "run")
    run_train(
        _config(tmp_path, caches, run_dir=run_dir, max_steps=2, checkpoint_every=2, model={"init_from": str(ckpt)})
    )
    (Path(run_dir) / "manifest.json").unlink()  # as if killed after the checkpoint
    again = run_train(
        _config(tmp_path, caches, run_dir=run_dir, max_steps=4, model={"init_from": str(tmp_path / "gone.ckpt")})
    )
    assert again.steps == 4 and "model.init_from" in capsys.readouterr().out  # the missing file is never read
    init = json.loads((Path(run_dir) / "manifest.json").read_text())["init"]
    assert init["source"] == str(ckpt.resolve())  # what the run started from, not what the resume named


def test_convert_ldm_bundle_fine_tunes_end_to_end(tmp_path, caches, capsys):
    from test_convert import TINY_ARGS, compvis_layout, random_state, schedule_buffers

    state = (
        random_state(
            compvis_layout("tiny", "vq-f4-tiny", context_dim=DIM, clip=dict(width=DIM, layers=1, intermediate=32))
        )
        | schedule_buffers()
    )
    ckpt = tmp_path / "pathldm.ckpt"
    torch.save({"state_dict": state}, ckpt)
    bundle = tmp_path / "converted"
    assert main(["convert-ldm", str(ckpt), "--out", str(bundle), *TINY_ARGS]) == 0
    assert main(_train_args(tmp_path, caches, bundle, "max_steps=3", "ema=false")) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    init = json.loads((run_dir / "manifest.json").read_text())["init"]
    assert (init["kind"], init["loaded"], init["skipped"]) == (
        "bundle",
        len(load_file(bundle / "unet" / "diffusion_pytorch_model.safetensors")),
        [],
    )
    assert "UNet from" in capsys.readouterr().out
    # a run folder is a source too: the fine-tuned run starts the next one
    assert main(_train_args(tmp_path, caches, run_dir, "max_steps=3", "name=second")) == 0
    assert (
        json.loads(next((tmp_path / "runs").glob("*-second")).joinpath("manifest.json").read_text())["init"]["kind"]
        == "run"
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: _compvis_unet(context_dim=2 * DIM),
            f"cross-attention takes {2 * DIM}-wide context, the text cache's embeddings are {DIM}-d",
        ),
        (
            lambda: _compvis_unet(preset="small"),
            "118 UNet tensors the 32-64-channel UNet has no place for: input_blocks.4.0.op.weight",
        ),
        (
            lambda: {**_compvis_unet(), "input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)},
            "input_blocks.0.0.weight has shape (32, 4, 3, 3), the 32-64-channel UNet expects (32, 3, 3, 3)",
        ),
        (
            lambda: {**_compvis_unet(), "input_blocks.9.0.weight": torch.zeros(1)},
            "1 UNet tensors the 32-64-channel UNet has no place for: input_blocks.9.0.weight",
        ),
    ],
)
def test_init_from_mismatches_are_one_line_errors(tmp_path, caches, capsys, make, message):
    ckpt = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": make()}, ckpt)
    assert main(_train_args(tmp_path, caches, ckpt)) == 2
    err = capsys.readouterr().err
    assert message in err and str(ckpt) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # refused before the run folder is written


def test_compvis_init_zeroes_exactly_compvis_zero_modules(tmp_path, caches):
    """CompVis zero_module: every ResBlock's out_layers.3, SpatialTransformer proj_out and out.2, named in
    CompVis terms from the CompVis structure; a from-scratch run with model.init: compvis starts there."""
    from histoldm.models.presets import build_unet
    from histoldm.train.init import compvis_init

    torch.manual_seed(0)
    unet = build_unet("tiny", context_dim=DIM, sample_size=SIZE)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    zeroed = compvis_init(unet)
    names = _ours_from_compvis(unet.state_dict())
    zero = {names[k] for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert all(not unet.state_dict()[k].any() for k, v in names.items() if v in zero)
    expected = {
        k
        for k in _compvis_unet()
        if k.rsplit(".", 1)[0].endswith((".out_layers.3", ".proj_out")) or k.startswith("out.2.")
    }
    assert zero == expected and zeroed == len(expected) == 26
    out = unet(
        torch.randn(2, 3, SIZE, SIZE), torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, LENGTH, DIM)
    ).sample
    assert torch.equal(out, torch.zeros_like(out))

    weights, report = _unet_at_step_0(tmp_path, caches, {"init": "compvis"})
    assert not weights["conv_out.weight"].any() and weights["conv_in.weight"].any()
    start = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "c"), max_steps=2, model={"init": "compvis"}))
    assert (
        json.loads((Path(start.run_dir) / "manifest.json").read_text())["init"]
        == report
        == {"source": "scratch", "init": "compvis", "zeroed": 26}
    )


def test_taming_quantize_picks_tamings_code_on_near_ties():
    """Latent vectors on the bisector of two neighbouring codes: diffusers' cdist and taming's
    z^2 + e^2 - 2 z.e pick different codes for many of them; quantize="taming" picks taming's."""
    from histoldm.models.autoencoder import decode, load_autoencoder, taming_quantize

    ae = load_autoencoder("vq-f4-tiny")
    e = ae.model.quantize.embedding.weight.detach()
    gaps = torch.cdist(e, e).fill_diagonal_(float("inf"))
    g = torch.Generator().manual_seed(0)
    z = ((e + e[gaps.argmin(1)]) / 2).repeat(25, 1) + 1e-9 * torch.randn(25 * len(e), 3, generator=g)  # 1600 near-ties
    taming = torch.argmin(
        torch.sum(z**2, 1, keepdim=True) + torch.sum(e**2, 1) - 2 * torch.einsum("bd,dn->bn", z, e.t()), 1
    )
    differ = taming != torch.argmin(torch.cdist(z, e), 1)
    assert differ.sum() > 50  # the choice of expression matters on these
    as_latents = lambda v: v.t().reshape(1, 3, 40, 40)  # noqa: E731
    assert torch.equal(taming_quantize(as_latents(z), e), as_latents(z + (e[taming] - z)))
    with torch.no_grad():
        ours, default = decode(ae, as_latents(z), quantize="taming"), decode(ae, as_latents(z))
        assert torch.equal(default, ae.model.decode(as_latents(z)).sample)  # the default is diffusers' own
        assert torch.allclose(ours, ae.model.decode(as_latents(e[taming]), force_not_quantize=True).sample, atol=1e-5)
        assert (ours - default).abs().amax() > 1e-3


def test_init_from_a_bundle_of_another_head_layout_is_refused(tmp_path, caches):
    """pathldm and pathldm-h64 share every tensor shape; only the head count differs, which would
    silently change what the weights compute: the source's saved config is compared, not only shapes."""
    first = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "a"), max_steps=1))
    config = Path(first.bundle) / "unet" / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "attention_head_dim": [2, 4]}))
    with pytest.raises(UserError, match=r"attention_head_dim is \[2, 4\], the run's UNet preset has \[1, 2\]"):
        run_train(
            _config(tmp_path, caches, run_dir=str(tmp_path / "b"), max_steps=1, model={"init_from": first.bundle})
        )


def test_init_from_an_unfinished_run_uses_its_latest_checkpoint(tmp_path, caches):
    import shutil

    first = run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "a"), max_steps=2, checkpoint_every=2))
    shutil.rmtree(first.bundle)  # as if still training: only checkpoints
    weights = Path(first.run_dir) / "checkpoints" / "step-00000002" / "model.safetensors"
    got, init = _unet_at_step_0(tmp_path, caches, {"init_from": first.run_dir})
    want = load_file(weights)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert init["kind"] == "run" and init["sha256"] == __import__("hashlib").sha256(weights.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "args, key",
    [
        (["train-vae", "STORE", "--out", "OUT", "--steps", "0"], "steps"),
        (["train-vae", "STORE", "--out", "OUT", "--steps", "-5"], "steps"),
        (["train-vae", "STORE", "--out", "OUT", "--batch-size", "0"], "batch_size"),
        (["train", "--config", str(CONFIGS / "train_tiny.yaml"), "--set", "max_steps=0"], "max_steps"),
        (["train", "--config", str(CONFIGS / "train_tiny.yaml"), "--set", "optim.lr=-1"], "optim.lr"),
    ],
)
def test_zero_or_negative_counts_are_refused_before_training(tmp_path, capsys, args, key):
    """0 steps used to exit 0 and save untrained weights as a model."""
    args = [str(tmp_path / "store") if a == "STORE" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"'{key}'" in err and "greater than" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_training_without_a_split_says_so_loudly(tmp_path, caches, capsys):
    """Without data.split the run trains on the test cases too: it must say so, and say what it trains on."""
    no_split = {k: v for k, v in caches.items() if k != "split"}
    cfg = _config(tmp_path, no_split, run_dir=str(tmp_path / "a"), max_steps=1)
    cfg.data.split = None
    run_train(cfg)
    captured = capsys.readouterr()
    assert "WARNING: no data.split" in captured.err and "48 patches from 4 cases" in captured.err
    run_train(_config(tmp_path, caches, run_dir=str(tmp_path / "b"), max_steps=1))
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err and "48 training patches from 4 cases (split 'train'" in captured.out
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["produced"]["cases"] == 4


def test_shipped_training_configs_name_a_split():
    from histoldm.config import read_yaml

    for name in ("train_tiny.yaml", "histoldm.yaml", "pathldm.yaml"):
        assert read_yaml(CONFIGS / name)["data"].get("split"), name


def test_train_vae_with_a_split_of_no_held_out_case_names_the_split(tmp_path, capsys):
    """--split given, every case in train: the error names the split file and how to split again, never
    '--split' or holdout_patches (the advice for a run without a split)."""
    store = write_patch_store(tmp_path / "store", n=9)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"cases": {"test": [], "train": ["c0", "c1", "c2"], "val": []}}))
    assert (
        main(
            [
                "train-vae",
                str(store),
                "--out",
                str(tmp_path / "vae"),
                "--init",
                "kl-f4-tiny",
                "--steps",
                "1",
                "--split",
                str(split),
                "--set",
                "workers=0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{split}: puts 3 of the 3 cases" in err and "0 in its other splits" in err
    assert "--fractions" in err and "--split" not in err and "holdout_patches" not in err


def test_init_from_prints_skipped_keys_grouped_with_counts(tmp_path, caches, capsys):
    """cin256-v2's file order: schedule buffers, UNet, dozens of first-stage tensors, the class embedder last.
    Every group is printed with its count, so the class embedder is named however many tensors come before it."""
    from test_convert import compvis_layout, random_state, schedule_buffers

    full = random_state(
        compvis_layout("tiny", "vq-f4-tiny", context_dim=DIM, clip=dict(width=16, layers=1, intermediate=32))
    )
    first_stage = {k: v for k, v in full.items() if k.startswith("first_stage_model.") and ".loss." not in k}
    assert len(first_stage) > 20
    state = schedule_buffers() | {k: v for k, v in full.items() if k.startswith("model.diffusion_model.")} | first_stage
    state["cond_stage_model.embedding.weight"] = torch.randn(1001, DIM)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, ckpt)
    assert main(_train_args(tmp_path, caches, ckpt, "max_steps=1", f"run_dir={tmp_path / 'run'}")) == 0
    printed = capsys.readouterr().out
    assert (
        "skipped 1 tensor, class embedder (CompVis ClassEmbedder" in printed
        and "cond_stage_model.embedding.weight" in printed
    )
    assert f"skipped {len(first_stage)} tensors, first stage (autoencoder)" in printed
    assert (
        "skipped 3 tensors, diffusion schedule buffer" in printed
        and "betas, alphas_cumprod, sqrt_alphas_cumprod" in printed
    )
    init = json.loads((tmp_path / "run" / "init.json").read_text())
    assert (
        len(init["skipped"]) == len(first_stage) + 5 and f"{len(init['skipped'])} skipped" in printed
    )  # + scale_factor

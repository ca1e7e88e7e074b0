"""Sampling: solvers against diffusers and an analytic denoiser, guidance, determinism, resume, errors, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from builders import write_tiny_bundle
from histoldm.errors import UserError
from histoldm.sampling.solvers import ddim_timesteps, sample_ddim, sample_dpmpp_2m, training_alphas_cumprod

STEPS = 3
LONG_CAPTION = "invasive ductal carcinoma with dense lymphocytic infiltrate " * 30  # > 152 CLIP tokens
CAPTIONS = [f"high tumor, low til, sample {i}" for i in range(8)] + [LONG_CAPTION.strip()]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny model bundle: tiny UNet (context of tiny-clip), tiny KL autoencoder stored inside."""
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return path


def _sample(bundle: Path, captions: Path, out: Path, **kw):
    from histoldm.sampling.config import SampleConfig
    from histoldm.sampling.run import run_sample

    return run_sample(SampleConfig(checkpoint=bundle, captions=captions, out=out, steps=STEPS, device="cpu", **kw))


@pytest.fixture(scope="module")
def reference_run(bundle, captions_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    _sample(bundle, captions_file, out, batch_size=8)
    return out


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# --- solvers ----------------------------------------------------------------------------------


def test_ddim_timesteps_are_pathldms():
    assert ddim_timesteps(50).flip(0).tolist() == list(range(1, 1000, 20))


def _gaussian_eps(mu: float, s: float, alphas_cumprod: torch.Tensor):
    """The exact eps-prediction when the data is N(mu, s^2): E[eps | x_t]."""

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        a = alphas_cumprod[t]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return eps_fn


def test_ddim_matches_diffusers_scheduler_and_gaussian_truth():
    from histoldm.models.schedule import ddim_scheduler

    a = training_alphas_cumprod()
    eps_fn = _gaussian_eps(0.7, 0.3, a)
    x = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    ours = sample_ddim(eps_fn, x, ddim_timesteps(50), a)

    scheduler = ddim_scheduler()
    scheduler.set_timesteps(50)
    theirs = x.clone()
    for t in scheduler.timesteps:
        theirs = scheduler.step(eps_fn(theirs, int(t)), t, theirs, eta=0.0).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert abs(ours.mean().item() - a[0].sqrt().item() * 0.7) < 0.02  # DDIM stops at training step 0's noise

    # eta > 0: the same per-image noise given to diffusers step by step gives the same samples.
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    ours = sample_ddim(eps_fn, x[:3], ddim_timesteps(10), a, eta=1.0, generators=gens)
    scheduler.set_timesteps(10)
    gens, theirs = [torch.Generator().manual_seed(i) for i in range(3)], x[:3].clone()
    for t in scheduler.timesteps:
        noise = torch.stack([torch.randn(1, 1, 1, generator=g) for g in gens])
        theirs = scheduler.step(eps_fn(theirs, int(t)), t, theirs, eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_ddim_matches_diffusers_on_tiny_unet():
    from histoldm.models.presets import build_unet
    from histoldm.models.schedule import ddim_scheduler

    torch.manual_seed(1)
    unet = build_unet("tiny", context_dim=16, latent_channels=3, sample_size=8).eval()
    context = torch.randn(2, 8, 16)

    def eps_fn(x, t):
        with torch.no_grad():
            return unet(x, torch.full((x.shape[0],), int(t)), encoder_hidden_states=context).sample

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sample_ddim(eps_fn, x, ddim_timesteps(10), training_alphas_cumprod())
    scheduler = ddim_scheduler()
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == ddim_timesteps(10).tolist() == list(range(901, 0, -100))
    theirs = x.clone()
    for t in scheduler.timesteps:
        theirs = scheduler.step(eps_fn(theirs, t), t, theirs).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, x, atol=0.1)


def test_dpmpp_reaches_the_gaussian_in_20_steps():
    a = training_alphas_cumprod()
    x = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample_dpmpp_2m(_gaussian_eps(0.7, 0.3, a), x, 20)
    assert abs(out.mean().item() - 0.7) < 0.02
    assert abs(out.var().item() / x.var().item() / 0.09 - 1) < 0.05  # relative to the noise drawn


def test_every_solver_has_one_signature_and_the_caller_names_only_the_solver():
    """make_solver binds what differs (schedule, eta, a student's grid): each call is solver(eps_fn, x, steps,
    generators=...) and gives what the solver's own function gives."""
    from histoldm.sampling.solvers import make_solver, sample_unipc

    a = training_alphas_cumprod()
    eps_fn, x = _gaussian_eps(0.7, 0.3, a), torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1))

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in range(8)]

    expected = {
        "ddim": sample_ddim(eps_fn, x, ddim_timesteps(6), a),
        "ddim eta": sample_ddim(eps_fn, x, ddim_timesteps(6), a, eta=0.5, generators=gens()),
        "dpmpp": sample_dpmpp_2m(eps_fn, x, 6),
        "unipc": sample_unipc(eps_fn, x, 6),
    }
    for key, want in expected.items():
        name, eta = key.split()[0], 0.5 if key.endswith("eta") else 0.0
        assert torch.equal(make_solver(name, eta=eta)(eps_fn, x, 6, generators=gens()), want), key
    with pytest.raises(ValueError, match="lcm needs the student's solver_steps"):
        make_solver("lcm")


# --- parameterisation and guidance ------------------------------------------------------------


def test_eps_from_v_inverts_the_v_parameterisation():
    from histoldm.sampling.guidance import eps_from_v

    g = torch.Generator().manual_seed(0)
    x0, eps, alpha_bar = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.tensor(0.3)
    x = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(eps_from_v(v, x, alpha_bar), eps)


def test_guidance_scale_one_is_the_conditional_prediction():
    from histoldm.models.presets import build_unet
    from histoldm.sampling.guidance import classifier_free_guidance, unet_eps_fn

    torch.manual_seed(2)
    unet = build_unet("tiny", context_dim=16, latent_channels=3, sample_size=8).eval()
    eps_fn = unet_eps_fn(unet, "epsilon", training_alphas_cumprod())
    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (
        torch.randn(3, 3, 8, 8, generator=g),
        torch.randn(3, 8, 16, generator=g),
        torch.randn(1, 8, 16, generator=g),
    )
    with torch.no_grad():
        e_c = eps_fn(x, 500, cond)
        e_u = eps_fn(x, 500, uncond.expand(3, -1, -1))
        torch.testing.assert_close(
            classifier_free_guidance(eps_fn, cond, uncond, 1.0)(x, 500), e_c, rtol=1e-4, atol=1e-5
        )
        guided = classifier_free_guidance(eps_fn, cond, uncond, 1.75)(x, 500)
    torch.testing.assert_close(guided, e_u + 1.75 * (e_c - e_u), rtol=1e-4, atol=1e-5)
    assert (guided - e_c).abs().max() > 1e-3


def test_unipc_reaches_the_gaussian_in_20_steps():
    from histoldm.sampling.solvers import sample_unipc

    a = training_alphas_cumprod()
    x = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample_unipc(_gaussian_eps(0.7, 0.3, a), x, 20)
    assert abs(out.mean().item() - 0.7) < 0.02
    assert abs(out.var().item() / x.var().item() / 0.09 - 1) < 0.05


def test_guidance_interval_skips_the_unconditional_pass_outside_it():
    """Inside [lo, hi]: plain guidance from one 2B call; outside: the conditional prediction from a B call."""
    from histoldm.models.presets import build_unet
    from histoldm.sampling.guidance import classifier_free_guidance, unet_eps_fn

    torch.manual_seed(2)
    unet = build_unet("tiny", context_dim=16, latent_channels=3, sample_size=8).eval()
    eps_fn = unet_eps_fn(unet, "epsilon", training_alphas_cumprod())
    calls: list[int] = []

    def counted(x, t, context):
        calls.append(x.shape[0])
        return eps_fn(x, t, context)

    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (
        torch.randn(3, 3, 8, 8, generator=g),
        torch.randn(3, 8, 16, generator=g),
        torch.randn(1, 8, 16, generator=g),
    )
    plain = classifier_free_guidance(counted, cond, uncond, 1.75)
    limited = classifier_free_guidance(counted, cond, uncond, 1.75, interval=(200, 600))
    everywhere = classifier_free_guidance(counted, cond, uncond, 1.75, interval=(0, 999))
    with torch.no_grad():
        assert torch.equal(limited(x, 400), plain(x, 400)) and calls == [6, 6]
        calls.clear()
        torch.testing.assert_close(limited(x, 700), eps_fn(x, 700, cond), rtol=1e-4, atol=1e-5)
        assert calls == [3]  # only the conditional half went through the UNet
        calls.clear()
        timesteps = ddim_timesteps(10)  # 901, 801, ..., 1: four of them in [200, 600]
        ours = sample_ddim(limited, x, timesteps, training_alphas_cumprod())
        assert sorted(calls) == [3] * 6 + [6] * 4
        calls.clear()
        assert torch.equal(
            sample_ddim(everywhere, x, timesteps, training_alphas_cumprod()),
            sample_ddim(plain, x, timesteps, training_alphas_cumprod()),
        )  # covering every t: exactly plain guidance
        assert not torch.allclose(ours, sample_ddim(plain, x, timesteps, training_alphas_cumprod()), atol=1e-3)


def test_presets_fill_only_the_fields_not_given(tmp_path):
    from pydantic import ValidationError

    from histoldm.sampling.config import SAMPLE_PRESETS, SampleConfig

    base = {"checkpoint": tmp_path, "out": tmp_path / "o", "prompt": "x"}
    paper = SampleConfig(**base)
    assert (paper.solver, paper.steps, paper.guidance, paper.guidance_interval) == (
        "ddim",
        50,
        1.75,
        None,
    )  # the default stays PathLDM's
    fast = SampleConfig(**base, preset="fast")
    assert {k: getattr(fast, k) for k in SAMPLE_PRESETS["fast"]} == SAMPLE_PRESETS["fast"]
    assert SampleConfig(**base, preset="fast", steps=12, guidance_interval=None).model_dump(
        include={"solver", "steps", "guidance_interval"}
    ) == {"solver": "dpmpp", "steps": 12, "guidance_interval": None}
    with pytest.raises(ValidationError, match="needs 0 <= lo <= hi <= 999"):
        SampleConfig(**base, guidance_interval=(600, 200))


def test_unet_passes_per_image_of_each_preset():
    """Two passes per guided step, one outside the guidance interval, one per step of a distilled student."""
    from histoldm.sampling.solvers import passes_per_image

    assert [passes_per_image(*s) for s in (("ddim", 50, None), ("dpmpp", 12, (44, 634)), ("lcm", 4, None))] == [
        100,
        17,
        4,
    ]


def test_fast_preset_images_do_not_depend_on_the_batch(bundle, captions_file, tmp_path):
    """Guidance interval + DPM-Solver++: each image is still a function of its own seed only."""
    whole = _sample(bundle, captions_file, tmp_path / "bs8", batch_size=8, preset="fast", guidance_interval=(300, 999))
    _sample(bundle, captions_file, tmp_path / "bs1", batch_size=1, preset="fast", guidance_interval=(300, 999))
    assert whole.images == 9
    for n in range(1, 10):
        a, b = _pixels(tmp_path / f"bs8/images/000/{n:06d}.png"), _pixels(tmp_path / f"bs1/images/000/{n:06d}.png")
        assert np.abs(a - b).max() <= 1, n
    settings = json.loads((tmp_path / "bs8/settings.json").read_text(encoding="utf-8"))
    assert (settings["solver"], settings["guidance_interval"]) == ("dpmpp", [300, 999])
    with pytest.raises(UserError, match="guidance_interval"):  # resuming with another interval would mix images
        _sample(bundle, captions_file, tmp_path / "bs8", batch_size=8, preset="fast", guidance_interval=(0, 999))


def test_compile_options_reach_the_sampler_and_keep_the_images(
    bundle, captions_file, reference_run, tmp_path, monkeypatch
):
    """The sampler compiles with the configured mode and tuning, and compiled images match eager ones.

    Dynamo's eager backend (graphs traced and run, no generated kernels): inductor on a 2-core CPU takes
    over 10 minutes to compile the tiny UNet; the
    inductor kernels themselves are measured by benchmarks/bench_gpu.py on a GPU."""
    from histoldm.models import speed
    from histoldm.sampling import run as sampling_run

    seen = []
    real = speed.compile_unet

    def eager_backend(unet, mode="full", backend="inductor", tuning="default"):
        seen.append((mode, tuning))
        return real(unet, mode, backend="eager", tuning=tuning)

    monkeypatch.setattr(sampling_run, "compile_unet", eager_backend)  # the name the sampler calls
    _sample(
        bundle,
        captions_file,
        tmp_path / "c",
        batch_size=8,
        compile=True,
        compile_mode="blocks",
        compile_tuning="max-autotune",
    )
    assert seen == [("blocks", "max-autotune")]
    for n in range(1, 10):
        assert (
            np.abs(
                _pixels(reference_run / f"images/000/{n:06d}.png") - _pixels(tmp_path / f"c/images/000/{n:06d}.png")
            ).max()
            <= 1
        ), n


# --- caption inputs ---------------------------------------------------------------------------


def test_caption_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from histoldm.sampling.captions_io import read_caption_items, safe_file_stem

    txt = tmp_path / "c.txt"
    txt.write_text("first\n\nthird\n", encoding="utf-8")
    items, skipped = read_caption_items(txt)
    assert [(i.id, i.caption) for i in items] == [("000001", "first"), ("000003", "third")] and skipped[0][
        "id"
    ] == "000002"

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"id": "a/b", "caption": "x"}\n{"id": "c", "caption": "y"}\n', encoding="utf-8")
    assert [i.id for i in read_caption_items(jsonl)[0]] == ["a/b", "c"] and safe_file_stem("a/b") == "a_b"

    pq.write_table(
        pa.table({"patch_id": ["p1", "p2", "p3"], "case_id": ["A", "B", "A"], "caption": ["u", "v", "w"]}),
        tmp_path / "captions.parquet",
    )
    (tmp_path / "split.json").write_text(json.dumps({"cases": {"train": ["B"], "test": ["A"]}}), encoding="utf-8")
    items, _ = read_caption_items(tmp_path / "captions.parquet", split=tmp_path / "split.json")
    assert [i.id for i in items] == ["p1", "p3"]
    # --prompt ids are numbered like .txt lines (they used to start at 000000)
    assert [i.id for i in read_caption_items(prompt="tumor", num_images=3)[0]] == ["000001", "000002", "000003"]
    # a split that exists but holds no case is named as such, not as missing
    (tmp_path / "split.json").write_text(json.dumps({"cases": {"train": ["A", "B"], "val": []}}), encoding="utf-8")
    with pytest.raises(UserError, match=r"split 'val' has no cases \(have train \(2 cases\), val \(0 cases\)\)"):
        read_caption_items(tmp_path / "captions.parquet", split=tmp_path / "split.json", split_name="val")
    with pytest.raises(UserError, match="no split named 'test'"):
        read_caption_items(tmp_path / "captions.parquet", split=tmp_path / "split.json", split_name="test")


def test_empty_caption_file_is_a_user_error(tmp_path, bundle):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty.txt: no captions"):
        _sample(bundle, empty, tmp_path / "out")


def test_missing_checkpoint_is_a_user_error(tmp_path, captions_file):
    with pytest.raises(UserError, match="checkpoint not found"):
        _sample(tmp_path / "nope", captions_file, tmp_path / "out")


# --- end to end -------------------------------------------------------------------------------


def test_run_writes_images_index_grid_and_manifest(reference_run):
    index = [json.loads(line) for line in (reference_run / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in index] == [f"{n:06d}" for n in range(1, 10)]
    assert all((reference_run / r["file"]).is_file() and r["file"].startswith("images/000/") for r in index)
    assert [r["truncated"] for r in index] == [False] * 8 + [True]
    assert len({r["seed"] for r in index}) == 9
    assert _pixels(reference_run / "grid.png").shape == (3 * 32, 3 * 32, 3)  # 3 x 3 tiles of 32 px
    manifest = json.loads((reference_run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["produced"]["images"] == 9 and manifest["truncated"]["count"] == 1


def test_batch_size_does_not_change_an_image(bundle, captions_file, reference_run, tmp_path):
    _sample(bundle, captions_file, tmp_path / "bs1", batch_size=1)
    for n in range(1, 10):
        a, b = _pixels(reference_run / f"images/000/{n:06d}.png"), _pixels(tmp_path / f"bs1/images/000/{n:06d}.png")
        assert np.abs(a - b).max() <= 1, n
    assert _pixels(reference_run / "images/000/000001.png").std() > 1  # not a blank image


def test_interrupted_run_resumes_to_the_same_files(bundle, captions_file, reference_run, tmp_path):
    out = tmp_path / "out"
    first_eight = tmp_path / "captions.txt"
    first_eight.write_text("\n".join(CAPTIONS[:8]) + "\n", encoding="utf-8")
    _sample(bundle, first_eight, out, batch_size=8)  # the first batch finished, then the run "died":
    with open(out / "index.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "0000')  # a torn index line
    (out / "images/000/000009.png").write_bytes(b"half a png")  # a PNG without its index line
    (out / "images/000/.000009.png.k1ll3d.tmp").write_bytes(b"half")  # the temp file a kill left behind
    (out / "grid.png").unlink()

    result = _sample(bundle, captions_file, out, batch_size=8)
    assert result.n_new == 1 and not list(out.rglob("*.tmp"))
    for path in sorted(reference_run.rglob("*.png")) + [reference_run / "index.jsonl"]:
        rel = path.relative_to(reference_run)
        assert (out / rel).read_bytes() == path.read_bytes(), rel
    assert _sample(bundle, captions_file, out, batch_size=8).n_new == 0
    with pytest.raises(UserError, match="other settings"):
        _sample(bundle, captions_file, out, batch_size=8, guidance=3.0)
    changed = tmp_path / "changed.txt"  # same line numbers (ids), another caption on one of them
    changed.write_text("\n".join(CAPTIONS[:-1] + ["a caption these images were not made for"]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="1 images were made for other captions"):
        _sample(bundle, changed, out, batch_size=8)


def test_checkpoint_trained_with_another_text_encoder_is_a_user_error(bundle, captions_file, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from histoldm.text.encoders import TINY_CLIP

    torch.manual_seed(1)
    CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).save_pretrained(tmp_path / "other-clip")
    with pytest.raises(UserError, match="trained with text encoder tiny-clip .*got .*other-clip"):
        _sample(bundle, captions_file, tmp_path / "out", text_encoder=str(tmp_path / "other-clip"))

    cache = tmp_path / "cache"
    cache.mkdir()
    from safetensors.torch import save_file

    save_file(
        {"embeddings": torch.zeros(1, 154, 64), "uncond": torch.zeros(1, 154, 64)}, cache / "embeddings.safetensors"
    )
    (cache / "index.jsonl").write_text('{"caption": "x", "row": 0}\n', encoding="utf-8")
    meta = {"encoder": "plip", "mode": "pathldm", "max_length": 154, "dim": 64, "fingerprint": "f" * 64}
    (cache / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="trained with text encoder tiny-clip"):
        _sample(bundle, captions_file, tmp_path / "out2", text_cache=cache)


def test_cli_in_process_with_a_run_folder_and_a_text_cache(bundle, captions_file, reference_run, tmp_path, capsys):
    from histoldm.cli import main
    from histoldm.text.cache import run_encode_text
    from histoldm.text.config import EncodeTextConfig

    run_dir = tmp_path / "run"
    shutil.copytree(bundle, run_dir / "model")  # a training run folder: RUN/model/ is the bundle
    run_encode_text(
        EncodeTextConfig(
            captions=captions_file,
            text_encoder="tiny-clip",
            mode="pathldm",
            max_length=154,
            out=tmp_path / "cache",
            device="cpu",
        )
    )
    common = ["sample", "--checkpoint", str(run_dir), "--steps", str(STEPS), "--device", "cpu"]
    assert (
        main(
            [
                *common,
                "--captions",
                str(captions_file),
                "--text-cache",
                str(tmp_path / "cache"),
                "--out",
                str(tmp_path / "out"),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    assert "9 images (9 new), 1 captions truncated" in capsys.readouterr().out
    for n in range(1, 10):  # cached embeddings give the images the encoder gives
        assert (
            np.abs(
                _pixels(reference_run / f"images/000/{n:06d}.png") - _pixels(tmp_path / f"out/images/000/{n:06d}.png")
            ).max()
            <= 1
        )

    assert (
        main(
            [
                *common,
                "--prompt",
                "low tumor, high til",
                "--num-images",
                "1",
                "--solver",
                "dpmpp",
                "--out",
                str(tmp_path / "dpm"),
            ]
        )
        == 0
    )
    assert _pixels(tmp_path / "dpm/images/000/000001.png").std() > 1
    assert (
        main([*common, "--prompt", "x", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err


def test_pathldm_numerics_on_cpu_land_near_the_default(bundle, captions_file, reference_run, tmp_path):
    """`numerics: pathldm` runs on the CPU (fp32 UNet under fp16 autocast, truncation): other pixels
    than the default's, on average about half a level darker, no more than a few levels away; a text
    cache encoded in bf16 is refused."""
    from histoldm.text.cache import run_encode_text
    from histoldm.text.config import EncodeTextConfig

    _sample(bundle, captions_file, tmp_path / "pd", batch_size=8, numerics="pathldm")
    numerics = json.loads((tmp_path / "pd" / "settings.json").read_text())["numerics"]
    assert numerics == {
        "precision": "pathldm",
        "text_dtype": "float32",
        "weights": "float32",
        "autocast": "float16",
        "to_uint8": "truncate",
    }
    diffs = np.stack(
        [
            _pixels(tmp_path / f"pd/images/000/{n:06d}.png") - _pixels(reference_run / f"images/000/{n:06d}.png")
            for n in range(1, 10)
        ]
    )
    assert diffs.any() and np.abs(diffs).mean() < 2 and -1.0 < diffs.mean() < -0.2
    run_encode_text(
        EncodeTextConfig(
            captions=captions_file,
            text_encoder="tiny-clip",
            max_length=154,
            out=tmp_path / "tc",
            device="cpu",
            dtype="bfloat16",
        )
    )
    with pytest.raises(UserError, match="numerics pathldm needs float32"):
        _sample(bundle, captions_file, tmp_path / "pd2", numerics="pathldm", text_cache=tmp_path / "tc")

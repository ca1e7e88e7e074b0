"""`histoldm distill` and `sample --preset turbo` on a tiny random teacher: the student starts as its
teacher, distils, resumes bit for bit, and samples in 1, 2 and 4 steps deterministically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from builders import TEACHER_CAPTIONS, write_tiny_teacher
from histoldm.cli import main
from histoldm.models.bundle import read_bundle_meta
from histoldm.train.config import DistillConfig
from histoldm.train.distill import run_distill

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict:
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def _config(paths: dict, run_dir: Path, **overrides) -> DistillConfig:
    raw = {
        "teacher": paths["teacher"],
        "run_dir": run_dir,
        "batch_size": 4,
        "precision": "float32",
        "log_every": 2,
        "checkpoint_every": 4,
        "max_steps": 8,
        "data": {k: paths[k] for k in ("latents", "text_cache", "captions", "split")},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
    }
    return DistillConfig.model_validate({**raw, **overrides})


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory) -> Path:
    return run_distill(_config(teacher, tmp_path_factory.mktemp("distill") / "run")).bundle


def _sample(bundle: Path, out: Path, **kw):
    from histoldm.sampling.config import SampleConfig
    from histoldm.sampling.run import run_sample

    args = {
        "checkpoint": bundle,
        "prompt": TEACHER_CAPTIONS[1],
        "num_images": 4,
        "out": out,
        "preset": "turbo",
        "device": "cpu",
        **kw,
    }
    return run_sample(SampleConfig.model_validate(args))


def _pixels(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted((folder / "images").rglob("*.png"))])


def test_untrained_student_is_its_teachers_conditional_prediction(teacher):
    """The guidance projection starts at zero: any scale gives the teacher's output, so distillation starts
    from the teacher instead of from noise."""
    from histoldm.models.bundle import load_bundle_unet
    from histoldm.models.student import guidance_embedding, make_student

    unet = load_bundle_unet(teacher["teacher"]).eval()
    student = make_student(unet).eval()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([999, 259])
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=context).sample
        for scale in (1.0, 3.0):
            got = student(
                x, t, encoder_hidden_states=context, timestep_cond=guidance_embedding(torch.full((2,), scale))
            ).sample
            torch.testing.assert_close(got, expected)


def test_consistency_target_at_the_last_jump_is_the_teachers_ddim_step(teacher):
    """At t = 19 the target's timestep is 0, where f(x, 0) = x: the student learns the teacher's guided DDIM
    step itself (the boundary condition that anchors the whole chain)."""
    from histoldm.models.student import boundary_scalings

    c_skip, c_out = boundary_scalings(torch.tensor([0, 19, 999]))
    assert (c_skip[0].item(), c_out[0].item()) == (1.0, 0.0)
    assert c_skip[1] < 1e-3 and c_out[1] > 0.999 and c_skip[2] < 1e-6


def test_student_samples_in_1_2_and_4_steps_and_records_how(teacher, student, tmp_path):
    meta = read_bundle_meta(student)
    assert (
        meta.distilled is not None and meta.distilled.solver_steps == 50 and meta.distilled.guidance_range == (1.0, 3.0)
    )
    assert meta.trained_steps == 8 and (student / "autoencoder" / "config.json").is_file()
    weights = load_file(student / "unet" / "diffusion_pytorch_model.safetensors")
    assert weights["time_embedding.cond_proj.weight"].abs().max() > 0  # the guidance input was trained
    images = {}
    for steps in (1, 2, 4):
        result = _sample(student, tmp_path / f"s{steps}", steps=steps)
        assert result.images == 4
        images[steps] = _pixels(tmp_path / f"s{steps}")
        settings = json.loads((tmp_path / f"s{steps}" / "settings.json").read_text())
        assert (settings["solver"], settings["steps"]) == ("lcm", steps)
        assert images[steps].std() > 1  # not a flat image
    assert not np.array_equal(images[1], images[4]) and not np.array_equal(images[2], images[4])


def test_student_with_the_same_seed_gives_the_same_images_whatever_the_batch(student, tmp_path):
    _sample(student, tmp_path / "a", batch_size=4, seed=3)
    _sample(student, tmp_path / "b", batch_size=4, seed=3)
    _sample(student, tmp_path / "c", batch_size=1, seed=3)
    _sample(student, tmp_path / "d", batch_size=4, seed=4)
    a = sorted((tmp_path / "a" / "images").rglob("*.png"))
    assert [p.read_bytes() for p in a] == [(tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in a]
    assert (
        np.abs(_pixels(tmp_path / "a") - _pixels(tmp_path / "c")).max() <= 1
    )  # per-image noise: batch size changes no image
    assert np.abs(_pixels(tmp_path / "a") - _pixels(tmp_path / "d")).max() > 10  # another seed is another image


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(teacher, tmp_path):
    straight = run_distill(_config(teacher, tmp_path / "a"))
    run_distill(_config(teacher, tmp_path / "b", max_steps=4))
    (tmp_path / "b" / "manifest.json").unlink()  # as if killed after the step-4 checkpoint
    shutil.rmtree(tmp_path / "b" / "model")
    resumed = run_distill(_config(teacher, tmp_path / "b", resume="latest"))
    assert resumed.steps == 8
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(straight.run_dir / "checkpoints" / "step-00000008" / name)
        b = load_file(resumed.run_dir / "checkpoints" / "step-00000008" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    stats = [
        [json.loads(line) for line in (r.run_dir / "stats.jsonl").read_text().splitlines()] for r in (straight, resumed)
    ]
    assert [(s["step"], s["loss"]) for s in stats[0]] == [(s["step"], s["loss"]) for s in stats[1]]


def test_resume_refuses_another_student_form(teacher, tmp_path):
    from histoldm.errors import UserError

    run_distill(_config(teacher, tmp_path / "r", max_steps=4))
    with pytest.raises(UserError, match="resuming with another model .* .student.guidance_range"):
        run_distill(_config(teacher, tmp_path / "r", resume="latest", guidance_range=(1.0, 5.0)))


def test_turbo_on_a_teacher_and_ddim_on_a_student_are_one_line_errors(teacher, student, tmp_path, capsys):
    common = ["sample", "--prompt", TEACHER_CAPTIONS[0], "--device", "cpu"]
    assert (
        main([*common, "--checkpoint", str(teacher["teacher"]), "--preset", "turbo", "--out", str(tmp_path / "t")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distill" in err and str(teacher["teacher"]) in err
    assert not (tmp_path / "t").exists()  # refused before any output
    assert main([*common, "--checkpoint", str(student), "--out", str(tmp_path / "s")]) == 2
    assert "--preset turbo" in capsys.readouterr().err
    assert (
        main(
            [*common, "--checkpoint", str(student), "--preset", "turbo", "--steps", "9", "--out", str(tmp_path / "s9")]
        )
        == 2
    )
    assert (
        main(
            [
                *common,
                "--checkpoint",
                str(student),
                "--preset",
                "turbo",
                "--guidance",
                "5",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 2
    )
    assert "outside the scales" in capsys.readouterr().err


def test_distilling_a_student_or_foreign_caches_is_refused(teacher, student, tmp_path):
    from histoldm.errors import UserError

    with pytest.raises(UserError, match="already a distilled student"):
        run_distill(_config({**teacher, "teacher": student}, tmp_path / "x"))
    meta = json.loads((Path(teacher["latents"]) / "meta.json").read_text())
    other = tmp_path / "latents"
    shutil.copytree(teacher["latents"], other)
    (other / "meta.json").write_text(json.dumps({**meta, "fingerprint": "another-autoencoder"}))
    with pytest.raises(UserError, match="another autoencoder"):
        run_distill(_config({**teacher, "latents": other}, tmp_path / "y"))
    assert not (tmp_path / "y").exists()


def test_cli_distils_and_resumes(teacher, tmp_path, capsys):
    args = [
        "distill",
        "--teacher",
        str(teacher["teacher"]),
        "--latents",
        str(teacher["latents"]),
        "--text-cache",
        str(teacher["text_cache"]),
        "--captions",
        str(teacher["captions"]),
        "--split",
        str(teacher["split"]),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--batch-size",
        "4",
        "--precision",
        "float32",
        "--checkpoint-every",
        "2",
        "--log-every",
        "2",
    ]
    assert main([*args, "--max-steps", "2"]) == 0
    assert "distilled 2 steps" in capsys.readouterr().out
    (tmp_path / "runs" / "00000-turbo" / "manifest.json").unlink()  # as if killed after the checkpoint
    assert main([*args, "--max-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "distilled 4 steps in" in out and "00000-turbo" in out


def test_config_refuses_a_setting_distill_would_ignore(teacher, tmp_path):
    with pytest.raises(ValueError, match="min_snr_gamma"):
        _config(teacher, tmp_path / "z", optim={"min_snr_gamma": 5.0})

"""benchmarks/bench_gpu.py on CPU (--tiny) and the speed levers it measures (histoldm.models.speed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from histoldm.errors import UserError
from histoldm.models.presets import build_unet
from histoldm.models.speed import compile_unet, enable_gradient_checkpointing

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def fresh_accelerate():
    """run_train in this process fixes accelerate's process-wide precision; other test files pick their own."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _tiny_unet(seed: int = 0):
    torch.manual_seed(seed)
    return build_unet("tiny", context_dim=16, latent_channels=3, sample_size=8)


def _inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 8, 8, generator=g), torch.tensor([10, 900]), torch.randn(b, 5, 16, generator=g)


def test_tiny_bench_writes_table_and_json(tmp_path):
    cases = "baseline train bf16 1-head,baseline ddim,ckpt(levels,fast,turbo,profile,encode,compile(full"
    proc = subprocess.run(
        [sys.executable, "-u", str(BENCH), "--tiny", "--out", str(tmp_path), "--cases", cases],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    results = {r["case"]: r for r in report["results"]}
    fast, encode = results["sample pathldm fast(dpm++3) bs2"], results["encode-latents vq-f4-tiny 16 PNGs"]
    assert {
        "baseline train bf16 1-head",
        "train pathldm +ckpt(levels 0,1)",
        "profile pathldm one guided ddim step bs2",
    } <= set(results)
    ok = [r for r in results.values() if r["status"] == "ok"]
    assert all(
        r["img_s"] > 0 and r["flops_per_img"] > 0 and r["tflops"] > 0
        for r in ok
        if r["group"] in ("train", "sample", "baseline-train")
    )
    assert {r["group"] for r in ok} == {"baseline-train", "baseline-sample", "train", "sample", "profile", "encode"}
    assert all(r["status"].startswith("skipped: compile needs CUDA") for n, r in results.items() if "compile" in n)
    assert results["train pathldm +ckpt(levels 0,1)"]["config"]["checkpoint_levels"] == [0, 1]
    # the fast preset: DPM-Solver++ with guidance on (44, 634); at 3 steps (999, 500, 0) one step is guided
    assert (fast["solver"], fast["guidance_interval"], fast["unet_passes"]) == ("dpmpp", [44, 634], 4)
    assert fast["hours_for_200k"] == pytest.approx(200_000 / fast["img_s"] / 3600)
    turbo = results["sample pathldm turbo(lcm4) bs2"]  # a distilled student: 4 consistency steps, one UNet pass each
    assert (turbo["status"], turbo["solver"], turbo["steps"], turbo["unet_passes"]) == ("ok", "lcm", 4, 4) and turbo[
        "img_s"
    ] > 0
    assert report["summary"]["turbo_fastest"]["img_s"] == turbo["img_s"]
    assert encode["latents"] == encode["patches"] == 16 and encode["img_s"] > 0 and encode["encoder_only_img_s"] > 0
    profile = results["profile pathldm one guided ddim step bs2"]
    assert (
        profile["top"]
        and sum(profile["by_kind_pct"].values()) == pytest.approx(100, abs=0.5)
        and profile["by_kind_pct"].get("convolution", 0) > 0
    )
    assert "one guided DDIM step" in (tmp_path / "profile_ddim_step.txt").read_text()
    assert report["environment"]["device"] == "cpu" and report["summary"]["fast_fastest"]["img_s"] > 0
    assert set(report["summary"]["verdicts"]) == {
        "ddim50_img_s",
        "fast_img_s",
        "train_img_s",
        "train_within_9gib_at_250",
        "encode_latents_img_s",
    }
    table = (tmp_path / "bench_gpu.md").read_text()
    assert (
        "| case | status |" in table
        and all(name in table for name in results)
        and "Profile of one guided DDIM step" in table
    )
    assert "| case | status |" in proc.stdout  # the same table, printed


def test_kernel_kinds_sum_to_one():
    shares = _load_bench().kernel_kinds(
        [
            ("sm90_xmma_fprop_implicit_gemm", 5.0),
            ("void at::native::group_norm_kernel", 3.0),
            ("ampere_bf16_s16816gemm", 1.0),
            ("fmha_cutlassF", 0.5),
            ("something", 0.5),
        ],
        10.0,
    )
    assert shares == pytest.approx(
        {"convolution": 0.5, "normalization": 0.3, "matmul": 0.1, "attention": 0.05, "other": 0.05}
    )


def test_a_failing_case_is_recorded_and_the_run_goes_on(tmp_path, fresh_accelerate):
    bench_gpu = _load_bench()
    args = type(
        "Args", (), {"tiny": True, "quick": False, "train_steps": None, "sample_batch": None, "budget_s": None}
    )()
    bench = bench_gpu.Bench(bench_gpu.make_profile(args), tmp_path / "out", tmp_path / "work", None)
    failed = bench.run_case(bench_gpu.Case("bad preset", "train", lambda: bench.ours_train("no-such-preset"), True, 1))
    fine = bench.run_case(bench_gpu.Case("baseline", "baseline-train", lambda: bench.baseline_train("tiny"), True, 1))
    assert (
        failed["status"].startswith("failed: UserError: unknown UNet preset 'no-such-preset'") and "traceback" in failed
    )
    assert fine["status"] == "ok" and fine["img_s"] > 0
    saved = json.loads((tmp_path / "out" / "bench_gpu.json").read_text())
    assert [r["status"][:6] for r in saved["results"]] == ["failed", "ok"]


def test_checkpointing_only_some_levels_sets_those_blocks_and_keeps_gradients():
    reference, checkpointed = _tiny_unet(), _tiny_unet()
    enable_gradient_checkpointing(checkpointed, levels=[0])
    on = lambda block: any(getattr(m, "gradient_checkpointing", False) for m in block.modules())  # noqa: E731
    assert on(checkpointed.down_blocks[0]) and on(checkpointed.up_blocks[-1])
    assert not on(checkpointed.down_blocks[1]) and not on(checkpointed.up_blocks[0]) and not on(checkpointed.mid_block)
    x, t, c = _inputs()
    for model in (reference, checkpointed):
        model.train()
        model(x, t, c).sample.square().mean().backward()
    for (name, a), b in zip(reference.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with pytest.raises(UserError, match="outside 0..1"):
        enable_gradient_checkpointing(_tiny_unet(), levels=[2])


def test_compiling_blocks_in_place_gives_the_same_output():
    eager, compiled = _tiny_unet(), _tiny_unet()
    same = compile_unet(compiled, "blocks", backend="eager")
    assert same is compiled and list(same.state_dict()) == list(eager.state_dict())
    x, t, c = _inputs()
    with torch.no_grad():
        assert torch.allclose(eager(x, t, c).sample, compiled(x, t, c).sample, atol=1e-6)
    with pytest.raises(UserError, match="choose full, fullgraph or blocks"):
        compile_unet(eager, "everything")


def test_the_unet_compiles_as_one_graph():
    """compile_mode fullgraph: dynamo raises at any graph break, so this passing means one graph
    (dynamo's eager backend: the trace, not inductor's kernels, which are bench_gpu's GPU cases)."""
    eager = _tiny_unet()
    x, t, c = _inputs()
    with torch.no_grad():
        reference = eager(x, t, c).sample
        compiled = compile_unet(eager, "fullgraph", backend="eager")
        assert compiled is not eager and torch.allclose(compiled(x, t, c).sample, reference, atol=1e-6)


def test_trainer_refuses_checkpoint_levels_without_checkpointing(tmp_path, fresh_accelerate):
    from histoldm.train.config import ModelSection, TrainConfig
    from histoldm.train.synthetic import write_synthetic_caches
    from histoldm.train.trainer import run_train

    data = write_synthetic_caches(tmp_path / "caches", 8, 3, 8, 5, 16, captions=4).model_copy(update={"workers": 0})
    cfg = TrainConfig(
        run_dir=tmp_path / "run",
        max_steps=1,
        batch_size=4,
        cpu=True,
        data=data,
        model=ModelSection(unet_preset="tiny", checkpoint_levels=[0]),
    )
    with pytest.raises(UserError, match="checkpoint_levels: set model.gradient_checkpointing"):
        run_train(cfg)


def test_sampler_decodes_in_chunks_without_changing_images(tmp_path):
    import dataclasses

    from histoldm.devices import sampling_numerics
    from histoldm.models.autoencoder import load_autoencoder
    from histoldm.sampling.config import SampleConfig
    from histoldm.sampling.context import CacheText
    from histoldm.sampling.guidance import unet_eps_fn
    from histoldm.sampling.run import ImageSampler
    from histoldm.sampling.solvers import training_alphas_cumprod
    from histoldm.text.cache import TextCache
    from histoldm.train.synthetic import write_synthetic_caches

    data = write_synthetic_caches(tmp_path / "caches", 8, 3, 8, 5, 16, captions=4)
    unet = _tiny_unet().eval()
    cfg = SampleConfig(checkpoint=tmp_path, out=tmp_path / "out", prompt="x", steps=3, solver="dpmpp", decode_batch=32)
    sampler = ImageSampler(
        cfg,
        CacheText(TextCache.open(data.text_cache)),
        unet_eps_fn(unet, "epsilon", training_alphas_cumprod()),
        load_autoencoder("vq-f4-tiny"),
        (3, 8, 8),
        1.0,
        torch.device("cpu"),
        sampling_numerics("default", "float32", torch.device("cpu")),
    )
    captions, seeds = [f"caption {i}" for i in (0, 1, 2)], [5, 6, 7]
    whole, _ = sampler(captions, seeds)
    chunked, _ = dataclasses.replace(sampler, cfg=cfg.model_copy(update={"decode_batch": 2}))(captions, seeds)
    assert whole.shape == (3, 3, 32, 32)
    assert torch.allclose(whole, chunked, atol=1e-5)

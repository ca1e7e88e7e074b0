"""One precision policy: every stage resolves its dtype through histoldm.devices.resolve_dtype, in one
vocabulary (auto | float32 | bfloat16 | float16, the old bf16/fp16/fp32 read as aliases)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from histoldm.config import load_config, read_yaml
from histoldm.config_files import SHIPPED_DIR
from histoldm.devices import resolve_dtype, sampling_numerics
from histoldm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "histoldm"
CPU = torch.device("cpu")
CUDA = torch.device("cuda")

# What would be a second precision policy: a hardware check, a name -> dtype table, an `auto` decided
# on the spot, or a config field with its own list of dtype names.
SECOND_POLICY = {
    "a bf16 hardware check": re.compile(r"is_bf16_supported"),
    "a name -> dtype table": re.compile(r"""["'](bf16|fp16|fp32|bfloat16|float16|float32)["']\s*:\s*torch\."""),
    "an auto choice of dtype": re.compile(r"torch\.(bfloat16|float16|float32) if "),
    "a dtype vocabulary of its own": re.compile(r"""Literal\[[^\]]*["'](bf16|fp16|bfloat16|float16)["']"""),
}


def test_no_stage_resolves_precision_outside_the_one_function():
    owners = {"devices.py", "config.py"}  # resolve_dtype and DTYPES; the vocabulary DtypeName
    found = [
        f"{path.relative_to(SRC)}:{n}: {what}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name not in owners or path.parent != SRC
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for what, pattern in SECOND_POLICY.items()
        if pattern.search(line)
    ]
    assert not found, "precision resolved outside histoldm.devices.resolve_dtype:\n" + "\n".join(found)


def test_the_grep_finds_a_second_policy(tmp_path):
    """The patterns above catch what the old code had (the test would fail on it)."""
    old = [
        'torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]',
        'return torch.bfloat16 if str(device).startswith("cuda") else torch.float32',
        'return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"',
        '    precision: Literal["auto", "bf16", "fp32"] = "auto"',
    ]
    assert all(any(p.search(line) for p in SECOND_POLICY.values()) for line in old)


def test_policy_on_cpu():
    assert resolve_dtype("auto", CPU, stage="s") == torch.float32
    assert resolve_dtype("bfloat16", CPU, stage="s") == torch.bfloat16  # CPU autocast runs it (the trainer's default)
    assert resolve_dtype("float16", CPU, stage="s") == torch.float16  # inference runs it (precision pathldm does)
    assert (
        resolve_dtype("bf16", CPU, stage="s") == torch.bfloat16
        and resolve_dtype("fp32", CPU, stage="s") == torch.float32
    )
    with pytest.raises(UserError, match=r"^train precision float16: training in float16 needs a GPU"):
        resolve_dtype("fp16", CPU, stage="train precision", training=True)
    with pytest.raises(UserError, match=r"^sample dtype half: expected one of auto, float32, bfloat16, float16"):
        resolve_dtype("half", CPU, stage="sample dtype")


@pytest.fixture
def gpu_without_bf16(monkeypatch):
    """A CUDA card without bf16 (a T4), simulated: only torch.cuda's answers change, in this test only."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")


def test_bf16_refused_on_a_gpu_without_it_and_auto_falls_back(gpu_without_bf16):
    with pytest.raises(UserError, match=r"^sample dtype bfloat16: not supported by Tesla T4; use float32"):
        resolve_dtype("bf16", CUDA, stage="sample dtype")
    assert resolve_dtype("auto", CUDA, stage="s") == torch.float32
    assert resolve_dtype("float16", CUDA, stage="s", training=True) == torch.float16
    # the sampler's auto used to pick bf16 on any CUDA card
    assert sampling_numerics("default", "auto", CUDA).weights == torch.float32


def test_bf16_refused_by_a_stage_before_any_compute(gpu_without_bf16, tmp_path):
    from histoldm.text.cache import run_encode_text
    from histoldm.text.config import EncodeTextConfig

    captions = tmp_path / "captions.txt"
    captions.write_text("high tumor\n", encoding="utf-8")
    cfg = EncodeTextConfig(
        captions=captions, text_encoder="tiny-clip", out=tmp_path / "tc", device="cuda", dtype="bf16"
    )
    with pytest.raises(UserError, match=r"^encode-text dtype bfloat16: not supported by Tesla T4"):
        run_encode_text(cfg)
    assert not (tmp_path / "tc").exists()


def test_auto_is_bf16_on_a_gpu_that_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", CUDA, stage="s") == torch.bfloat16


def test_aliases_normalise_when_a_config_is_read(tmp_path):
    from histoldm.evaluate.config import EvaluateConfig
    from histoldm.experiments.chain import train_config
    from histoldm.experiments.config import ModelRecipe
    from histoldm.sampling.config import SampleConfig
    from histoldm.train.config import EncodeLatentsConfig, TrainVAEConfig

    assert SampleConfig(checkpoint="m", out="o", dtype="fp16").dtype == "float16"
    assert EvaluateConfig(real="r", fake="f", out="o", dtype="bf16").dtype == "bfloat16"
    assert TrainVAEConfig(store="s", out="o", precision="fp32").precision == "float32"
    assert EncodeLatentsConfig(store="s", vae="v", out="o", precision="bf16").precision == "bfloat16"
    assert train_config(ModelRecipe(train={"precision": "fp32"}), "x", *[Path(".")] * 5).precision == "float32"
    yaml = tmp_path / "vae.yaml"
    yaml.write_text("store: s\nout: o\nprecision: fp16\n", encoding="utf-8")  # train-vae has no loss scaler
    with pytest.raises(
        UserError,
        match=rf"^{re.escape(str(yaml))}: config key 'precision': Input should be 'auto', 'float32' or 'bfloat16'",
    ):
        load_config(TrainVAEConfig, yaml)


def test_shipped_configs_use_the_one_vocabulary():
    from histoldm.train.config import TrainConfig

    names = {"auto", "float32", "bfloat16", "float16"}
    for path in sorted(SHIPPED_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(bf16|fp16|fp32)\b\s*(#|$)", text, re.M), f"{path}: old dtype spelling"
        raw = read_yaml(path)
        for block in (raw, raw.get("recipe") or {}):
            if "precision" in block:
                assert block["precision"] in names, path
    assert TrainConfig.model_validate(read_yaml(SHIPPED_DIR / "train_tiny.yaml")).precision == "float32"


def test_cpu_dtypes_as_before():
    """Each stage's default resolves on the CPU to the dtype it used before the one policy."""
    from histoldm.evaluate.config import EvaluateConfig
    from histoldm.sampling.config import SampleConfig
    from histoldm.text.config import EncodeTextConfig
    from histoldm.train.config import EncodeLatentsConfig, TrainConfig, TrainVAEConfig

    defaults = {
        "train": (TrainConfig.model_fields["precision"].default, torch.bfloat16),  # bf16 autocast, also on CPU
        "train-vae": (TrainVAEConfig.model_fields["precision"].default, torch.float32),
        "encode-latents": (EncodeLatentsConfig.model_fields["precision"].default, torch.float32),
        "encode-text": (EncodeTextConfig.model_fields["dtype"].default, torch.float32),
        "sample": (SampleConfig.model_fields["dtype"].default, torch.float32),
        "evaluate": (EvaluateConfig.model_fields["dtype"].default, torch.float32),
    }
    assert {k: resolve_dtype(name, CPU, stage=k) for k, (name, _) in defaults.items()} == {
        k: d for k, (_, d) in defaults.items()
    }


def test_an_autoencoder_run_recorded_with_an_old_spelling_still_resumes(tmp_path):
    from histoldm.fileio import atomic_write_json
    from histoldm.train.config import TrainVAEConfig
    from histoldm.train.vae import _check_same_training

    cfg = TrainVAEConfig(store=tmp_path / "s", out=tmp_path / "o", precision="float32")
    (tmp_path / "o").mkdir()
    atomic_write_json(
        tmp_path / "o" / "config.json", {**cfg.model_dump(mode="json"), "precision": "fp32"}
    )  # written before the one vocabulary
    _check_same_training(tmp_path / "o", cfg, resuming=True)
    with pytest.raises(UserError, match="other precision"):
        _check_same_training(tmp_path / "o", cfg.model_copy(update={"precision": "bfloat16"}), resuming=True)

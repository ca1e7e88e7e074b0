"""The frame every stage plugs into: CLI errors, configs, manifests, atomic files, tokenizer."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from histoldm.cli import main
from histoldm.config import StrictModel, load_config
from histoldm.errors import UserError
from histoldm.fileio import append_jsonl, atomic_write_json, read_jsonl
from histoldm.manifest import write_manifest
from histoldm.text.tokenizer import clip_tokenizer, count_tokens


class _Cfg(StrictModel):
    lr: float = 1e-4
    name: str = "x"
    sizes: list[int] = [1]


def test_clip_tokenizer_matches_openai_ids():
    assert clip_tokenizer()("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert count_tokens("a photo of a cat") == 5


def test_config_rejects_unknown_and_malformed(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 0.5\n")
    assert load_config(_Cfg, good, {"name": "y"}).model_dump() == {"lr": 0.5, "name": "y", "sizes": [1]}
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("lr: 0.5\nlrr: 1\n")
    with pytest.raises(UserError, match="unknown config key 'lrr'"):
        load_config(_Cfg, bad_key)
    # an error in a list item given on the command line is blamed on the command line, not on the file beside it
    with pytest.raises(UserError, match="^command line: config key 'sizes.1'"):
        load_config(_Cfg, good, {"sizes": [2, "big"]})
    lists = tmp_path / "lists.yaml"
    lists.write_text("sizes: [2, big]\n")
    with pytest.raises(UserError, match="lists.yaml: config key 'sizes.1'"):
        load_config(_Cfg, lists, {"name": "y"})
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [0.5\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(_Cfg, broken)


def test_jsonl_survives_torn_last_line(tmp_path):
    p = tmp_path / "a.jsonl"
    append_jsonl(p, [{"i": 1}, {"i": 2}])
    with open(p, "a") as f:
        f.write('{"i": 3')  # a crash mid-append
    assert [r["i"] for r in read_jsonl(p)] == [1, 2]
    append_jsonl(p, [{"i": 4}])  # the torn fragment is cut, not glued to the next record
    assert [r["i"] for r in read_jsonl(p)] == [1, 2, 4]


def test_manifest_records_inputs_and_versions(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    m = write_manifest(
        tmp_path / "manifest.json",
        stage="t",
        config=_Cfg(),
        inputs={"src": src},
        produced={"n": 1},
        started=0.0,
        seed=3,
    )
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["inputs"]["src"]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert on_disk["versions"]["torch"] and m["seed"] == 3


def test_atomic_write_json_replaces_whole_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"b": 2})
    assert json.loads(p.read_text()) == {"b": 2}
    assert list(tmp_path.iterdir()) == [p]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "histoldm.cli", *args], capture_output=True, text=True)


def test_cli_unknown_option_is_one_line_exit_2():
    r = _cli("assets", "--no-such-flag")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--no-such-flag" in r.stderr


def test_every_stage_has_help_with_example(capsys):
    stages = [
        "summarize",
        "tile",
        "scores",
        "captions",
        "split",
        "encode-text",
        "encode-latents",
        "train-vae",
        "train",
        "sample",
        "evaluate",
        "sweep",
        "demo",
    ]
    for stage in stages:
        with pytest.raises(SystemExit) as e:
            main([stage, "--help"])
        assert e.value.code == 0, stage
        out = capsys.readouterr().out
        assert "example:" in out and f"histoldm {stage}" in out, stage


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_request_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    """Every stage resolves devices through one policy: asking for CUDA on a CPU box is a clear error."""
    from histoldm.devices import resolve_device

    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="device nonsense"):
        resolve_device("nonsense")
    (tmp_path / "c.txt").write_text("a caption\n")
    assert (
        main(
            [
                "encode-text",
                str(tmp_path / "c.txt"),
                "--text-encoder",
                "tiny-clip",
                "--out",
                str(tmp_path / "cache"),
                "--device",
                "cuda",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err


def test_cpu_threads_policy_uses_the_free_cores_and_refuses_zero(capsys):
    """The demo's default: a thread per core no other process is using (idle, 2 threads beat 1 by 1.5x on
    2 cores; beside a busy process a thread per core collapsed 6-10x)."""
    import torch

    from histoldm.devices import available_cores, default_cpu_threads, machine_facts, set_cpu_threads, threads_beside

    assert [threads_beside(2, b) for b in (0.0, 0.3, 0.8, 1.0, 5.0)] == [2, 2, 1, 1, 1]
    assert threads_beside(16, 1.2) == 15 and threads_beside(1, 0.0) == 1
    before = torch.get_num_threads()
    try:
        assert 1 <= default_cpu_threads() <= available_cores()
        assert 1 <= set_cpu_threads(None) <= available_cores() and set_cpu_threads(None) == torch.get_num_threads()
        assert set_cpu_threads(1) == 1 and machine_facts()["threads"] == 1
        with pytest.raises(UserError, match="threads 0"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
    facts = machine_facts()
    assert facts["cpu"] and facts["cores"] >= 1 and facts["machine_cores"] >= facts["cores"]
    assert main(["demo", "--out", "unused", "--threads", "0"]) == 2
    assert "threads" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="the busy-core probe reads Linux /proc/stat")
def test_busy_cores_sees_a_busy_process_and_the_default_leaves_its_core():
    from histoldm.devices import available_cores, busy_cores, default_cpu_threads

    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores() >= 0.7  # other load on the machine only adds to it
        if available_cores() == os.cpu_count() and available_cores() >= 2:
            assert default_cpu_threads() <= available_cores() - 1
    finally:
        loop.kill()
        loop.wait()


def test_stage_times_in_the_order_the_stages_finished(tmp_path):
    """The demo's time table reads every manifest's wall time, oldest first; files without one are left out."""
    import os

    from histoldm.manifest import stage_times

    paths = {}
    for i, (label, stage) in enumerate([("b", "train"), ("a", "tile"), ("c", "sample")]):
        paths[label] = tmp_path / f"{label}.json"
        write_manifest(paths[label], stage=stage, config={}, inputs={}, produced={}, started=time.time() - 10 * (i + 1))
        os.utime(paths[label], (1000 + [2, 1, 3][i], 1000 + [2, 1, 3][i]))
    paths["broken"] = tmp_path / "broken.json"
    paths["broken"].write_text("{not json")
    rows = stage_times(paths)
    assert [(label, stage) for label, stage, _ in rows] == [("a", "tile"), ("b", "train"), ("c", "sample")]
    assert [round(s) for _, _, s in rows] == [20, 10, 30]


def test_wrong_kinds_of_input_are_one_line_errors(tmp_path, capsys):
    """Binary files where text or Parquet is expected, a file where a folder goes, a --set typo."""
    binary = bytes(range(256)) * 4
    cases = []
    for name in ("captions.parquet", "captions.txt", "captions.jsonl", "config.yaml"):
        (tmp_path / name).write_bytes(binary)
    (tmp_path / "ok.txt").write_text("a caption\n")
    cases.append(
        (
            [
                "encode-text",
                str(tmp_path / "captions.parquet"),
                "--text-encoder",
                "tiny-clip",
                "--out",
                str(tmp_path / "c"),
            ],
            "captions.parquet: captions file is not a readable Parquet file",
        )
    )
    cases.append(
        (
            [
                "encode-text",
                str(tmp_path / "captions.txt"),
                "--text-encoder",
                "tiny-clip",
                "--out",
                str(tmp_path / "c"),
            ],
            "captions.txt: captions file is not UTF-8 text",
        )
    )
    cases.append(
        (
            [
                "encode-text",
                str(tmp_path / "captions.jsonl"),
                "--text-encoder",
                "tiny-clip",
                "--out",
                str(tmp_path / "c"),
            ],
            "captions.jsonl: JSONL file is not UTF-8 text",
        )
    )
    cases.append((["train", "--config", str(tmp_path / "config.yaml")], "config.yaml: config file is not UTF-8 text"))
    cases.append(
        (
            ["encode-text", str(tmp_path / "ok.txt"), "--text-encoder", "tiny-clip", "--out", str(tmp_path / "ok.txt")],
            "ok.txt: exists as a file, expected a folder",
        )
    )
    cases.append(
        (
            ["train", "--config", "histoldm", "--set", "optim.learning_rate=1"],
            "command line: unknown config key 'optim.learning_rate'",
        )
    )
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (argv, err)


def _tiny_meta():
    from histoldm.models.bundle import BundleMeta, LatentContract, TextContract

    return BundleMeta(
        unet_preset="tiny",
        text=TextContract(encoder="minilm", mode="truncate", max_length=8, dim=8),
        latent=LatentContract(channels=3, size=8),
    )


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    """Outputs on a shared server must be readable by the lab when the umask says so (mkstemp alone gives 0600)."""
    import os
    import stat

    import torch

    from histoldm.fileio import atomic_write_text
    from histoldm.models.bundle import save_bundle
    from histoldm.models.presets import build_unet
    from histoldm.text.cache import _save_safetensors

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        _save_safetensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {})
        save_bundle(
            tmp_path / "bundle", _tiny_meta(), build_unet("tiny", context_dim=8, latent_channels=3, sample_size=8)
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "t.safetensors").stat().st_mode) == mode
    weights = list((tmp_path / "bundle").rglob("*.safetensors"))  # safetensors itself writes 0600 files
    assert weights and all(stat.S_IMODE(p.stat().st_mode) == mode for p in weights)

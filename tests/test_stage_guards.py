"""What every stage does around its work, on real small inputs: a read-only output refused before any
compute, Ctrl-C answered with one line, torch CPU threads set by --threads; and train refusing captions
that the text cache does not hold."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from builders import write_patch_store, write_tiny_bundle
from histoldm.assets import asset_path
from histoldm.cli import main
from histoldm.commands.stages import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
CASES = ["c0", "c1", "c2"]


def _summaries(path: Path, changed: str = "") -> Path:
    path.write_text(
        "".join(
            json.dumps({"case_id": c, "summary": f"invasive carcinoma of case {c}{changed if c == 'c1' else ''}"})
            + "\n"
            for c in CASES
        )
    )
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """A real patch store of three cases run through captions, split, encode-text (tiny-clip) and
    encode-latents (kl-f4-tiny), by the CLI as a user runs them."""
    root = tmp_path_factory.mktemp("chain")
    store = write_patch_store(root / "store", n=6, size=32, broken=False)
    paths = {
        "root": root,
        "store": store,
        "summaries": _summaries(root / "summaries.jsonl"),
        "captions": root / "captions.parquet",
        "split": root / "split.json",
        "text": root / "text",
        "latents": root / "latents",
    }
    for argv in (
        ["captions", str(store), "--summaries", str(paths["summaries"]), "--out", str(paths["captions"])],
        ["split", "--store", str(store), "--out", str(paths["split"]), "--fractions", "train=1.0"],
        [
            "encode-text",
            str(paths["captions"]),
            "--text-encoder",
            "tiny-clip",
            "--mode",
            "pathldm",
            "--max-length",
            "20",
            "--out",
            str(paths["text"]),
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
        [
            "encode-latents",
            str(store),
            "--vae",
            "kl-f4-tiny",
            "--out",
            str(paths["latents"]),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--threads",
            "1",
        ],
    ):
        assert main(argv) == 0, argv
    return paths


def _train_argv(chain: dict[str, Path], run_dir: Path, *sets: str) -> list[str]:
    data = {
        "latents": chain["latents"],
        "text_cache": chain["text"],
        "captions": chain["captions"],
        "split": chain["split"],
    }
    return [
        "train",
        "--config",
        str(ROOT / "configs" / "train_tiny.yaml"),
        "--run-dir",
        str(run_dir),
        "--max-steps",
        "2",
        "--threads",
        "1",
        *[a for k, v in data.items() for a in ("--set", f"data.{k}={v}")],
        *[a for s in sets for a in ("--set", s)],
    ]


def test_train_stops_when_captions_are_not_in_the_text_cache(chain, tmp_path, capsys):
    """One summary changed and captions re-run, encode-text not: training would drop that case's patches."""
    captions = tmp_path / "captions.parquet"
    shutil.copy(chain["captions"], captions)
    summaries = _summaries(tmp_path / "summaries.jsonl", changed=", lymphovascular invasion")
    assert main(["captions", str(chain["store"]), "--summaries", str(summaries), "--out", str(captions)]) == 0
    text = tmp_path / "text"
    shutil.copytree(chain["text"], text)
    local = {**chain, "captions": captions, "text": text}
    capsys.readouterr()

    assert main(_train_argv(local, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and f"{text}: 1 of the captions in {captions} (2 training pairs) are not in the text cache" in err
    )
    assert not (tmp_path / "run").exists()

    # allowed: trains on the rest and says so in the manifest
    assert main(_train_argv(local, tmp_path / "subset", "data.allow_missing_captions=true")) == 0
    manifest = json.loads((tmp_path / "subset" / "manifest.json").read_text())
    assert manifest["config"]["data"]["allow_missing_captions"] is True
    assert (
        manifest["produced"]["skipped_pairs"]["caption_not_in_text_cache"] == 2 and manifest["produced"]["pairs"] == 4
    )

    # the command the message names is the fix
    fix = shlex.split(re.search(r"`(histoldm encode-text [^`]+)`", err)[1])[1:]
    assert main(fix) == 0
    assert main(_train_argv(local, tmp_path / "run")) == 0
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["produced"]["pairs"] == 6


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written in, for real: chmod 0o555 for a user; as root (CI), whom the mode does
    not stop, the immutable attribute (chattr +i, on filesystems that keep it). Checked by trying to write."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip(
                "running as root: a read-only folder needs chattr +i (CAP_LINUX_IMMUTABLE, a filesystem that keeps it)"
            )
        undo = lambda: subprocess.run([chattr, "-i", str(folder)], check=True)  # noqa: E731
    try:
        (folder / "probe").touch()
    except OSError:
        pass
    else:
        undo()
        pytest.skip(f"{folder}: could not be made read-only here")
    yield folder
    undo()


def test_every_stage_refuses_a_read_only_output_before_any_compute(
    chain, read_only_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(read_only_folder.parent)
    ro = Path(read_only_folder.name)  # typed relative, as a user types it
    (tmp_path / "reports.csv").write_text("case_id,text\nc0,Invasive ductal carcinoma, grade 2.\n")
    (tmp_path / "one.txt").write_text("high tumor\n")
    c = chain
    argv = {
        "tile": [str(asset_path("cmu_slide")), "--out", f"{ro}/store"],
        "scores": [str(c["store"]), "--proxy", "--out", f"{ro}/scores.parquet"],
        "summarize": [str(tmp_path / "reports.csv"), "--out", f"{ro}/summaries.jsonl"],
        "split": ["--store", str(c["store"]), "--out", f"{ro}/split.json"],
        "captions": [str(c["store"]), "--summaries", str(c["summaries"]), "--out", f"{ro}/captions.parquet"],
        "export-patches": [
            str(c["store"]),
            "--captions",
            str(c["captions"]),
            "--split",
            str(c["split"]),
            "--split-name",
            "train",
            "--out",
            f"{ro}/patches",
        ],
        "encode-text": [str(c["captions"]), "--text-encoder", "tiny-clip", "--out", f"{ro}/text"],
        "train-vae": [str(c["store"]), "--init", "kl-f4-tiny", "--steps", "2", "--out", f"{ro}/vae"],
        "encode-latents": [str(c["store"]), "--vae", "kl-f4-tiny", "--out", f"{ro}/latents"],
        "train": _train_argv(c, ro / "run")[1:],
        "sample": ["--checkpoint", str(tmp_path), "--captions", str(tmp_path / "one.txt"), "--out", f"{ro}/samples"],
        "evaluate": [
            "--real",
            str(c["store"] / "patches"),
            "--fake",
            str(c["store"] / "patches"),
            "--out",
            f"{ro}/eval",
        ],
        "fid-ref": [str(c["store"] / "patches"), "--out", f"{ro}/stats.npz"],
        "convert-ldm": [str(tmp_path / "model.ckpt"), "--out", f"{ro}/bundle"],
        "demo": ["--out", f"{ro}/demo"],
        "sweep": ["--out", f"{ro}/sweep"],
        "distill": [
            "--teacher",
            str(tmp_path),
            "--run-dir",
            f"{ro}/student",
            *[
                a
                for k, v in (
                    ("latents", c["latents"]),
                    ("text-cache", c["text"]),
                    ("captions", c["captions"]),
                    ("split", c["split"]),
                )
                for a in (f"--{k}", str(v))
            ],
        ],
        "sample-region": [
            "--checkpoint",
            str(tmp_path),
            "--level",
            "high/low",
            "--size",
            "64",
            "--out",
            f"{ro}/regions",
        ],
        "evaluate-region": [
            "--regions",
            str(tmp_path),
            "--real",
            str(c["store"] / "patches"),
            "--out",
            f"{ro}/eval-regions",
        ],
        "utility": [
            "--real",
            str(c["store"] / "patches"),
            "--train-real",
            str(c["store"] / "patches"),
            "--fake",
            str(c["store"] / "patches"),
            "--captions",
            str(c["captions"]),
            "--split",
            str(c["split"]),
            "--out",
            f"{ro}/utility",
        ],
    }
    assert set(argv) == {command.name for command in COMMANDS}  # a new stage joins this walk
    for name, args in argv.items():
        typed = args[args.index("--run-dir" if name in ("train", "distill") else "--out") + 1]
        started = time.perf_counter()
        assert main([name, *args]) == 2, name
        err = capsys.readouterr().err
        assert err == f"histoldm {name}: error: {typed}: cannot write the output there ({ro} is not writable)\n", name
        assert time.perf_counter() - started < 5, name  # refused before the work, not after it
    assert (
        main(
            [
                "import",
                "folder",
                str(c["store"] / "patches"),
                "--csv",
                str(tmp_path / "one.txt"),
                "--out",
                f"{ro}/imported",
            ]
        )
        == 2
    )
    assert (
        capsys.readouterr().err
        == f"histoldm import: error: {ro}/imported: cannot write the output there ({ro} is not writable)\n"
    )
    assert not any(read_only_folder.iterdir())


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path):
    """A real SIGINT to `histoldm sample` in a child process, after its first images are written."""
    bundle = write_tiny_bundle(tmp_path)
    (tmp_path / "captions.txt").write_text("".join(f"high tumor, low til, sample {i}\n" for i in range(2000)))
    out = tmp_path / "samples"
    cmd = [
        sys.executable,
        "-m",
        "histoldm.cli",
        "sample",
        "--checkpoint",
        str(bundle),
        "--captions",
        str(tmp_path / "captions.txt"),
        "--out",
        str(out),
        "--steps",
        "50",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # As launched from a terminal: a parent started in the background (`cmd &`, as CI runners may be) ignores
    # SIGINT, the child would inherit that and Python would then install no KeyboardInterrupt handler.
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        index = out / "index.jsonl"
        _wait_for(
            lambda: index.is_file() and index.read_text().count("\n") >= 2 or child.poll() is not None, timeout=120
        )
        assert child.poll() is None, child.communicate()
        os.killpg(child.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    # the last line, on a line of its own: no progress bar is redrawn after it (as one was before, hiding it)
    assert err.splitlines()[-1] == (
        f"histoldm sample: interrupted; the images written so far are kept in {out}; the same command resumes with the "
        "rest"
    )
    assert "Traceback" not in err


TORCH_STAGES = {
    "encode-text",
    "train-vae",
    "encode-latents",
    "train",
    "sample",
    "evaluate",
    "fid-ref",
    "convert-ldm",
    "sweep",
}


def test_every_torch_stage_takes_threads_and_records_them(chain, tmp_path):
    import argparse

    from histoldm.cli import build_parser
    from histoldm.devices import available_cores

    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    helps = set()
    for name in TORCH_STAGES:
        subs[name].format_help()  # adds the derived options
        helps |= {a.help for a in subs[name]._actions if "--threads" in a.option_strings}
    assert len(helps) == 1 and "one per core no other process is using at the start" in helps.pop()

    before = torch.get_num_threads()
    encode = [
        "encode-text",
        str(chain["captions"]),
        "--text-encoder",
        "tiny-clip",
        "--mode",
        "pathldm",
        "--max-length",
        "20",
        "--device",
        "cpu",
    ]
    assert main([*encode, "--out", str(tmp_path / "text"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "text" / "manifest.json").read_text())["torch_threads"] == 1
    assert torch.get_num_threads() == before  # the caller's count is back

    # the default: OMP_NUM_THREADS when set (accelerate launch sets it), else one per core no other process is using
    for name, omp in (("omp", "1"), ("free", None)):
        with pytest.MonkeyPatch.context() as env:
            env.delenv("OMP_NUM_THREADS", raising=False) if omp is None else env.setenv("OMP_NUM_THREADS", omp)
            assert main([*encode, "--out", str(tmp_path / name)]) == 0
    assert json.loads((tmp_path / "omp" / "manifest.json").read_text())["torch_threads"] == 1
    assert 1 <= json.loads((tmp_path / "free" / "manifest.json").read_text())["torch_threads"] <= available_cores()

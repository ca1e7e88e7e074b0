"""The CLI is derived from the config models: a new field is a new option, every option lands in the config."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, create_model

from histoldm.cli import build_parser, main
from histoldm.commands._common import resolve_config
from histoldm.commands._flags import KEYS_DEST, add_config_flags, nested_field
from histoldm.config import StrictModel
from histoldm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    parser.format_help()  # adds the derived options
    return next(a for a in parser._actions if flag in a.option_strings)


def test_a_new_config_field_is_an_option_with_its_type_help_and_default(monkeypatch):
    import histoldm.sampling.run as sampling

    plus = create_model(
        "SampleConfigPlus",
        __base__=sampling.SampleConfig,
        cfg_rescale=(float, Field(0.7, ge=0, description="rescale the guided prediction")),
    )
    monkeypatch.setattr(sampling, "SampleConfig", plus)  # as if the field were written into SampleConfig
    sample = _subparsers()["sample"]
    action = _option(sample, "--cfg-rescale")
    assert action.type is float and action.default is None
    assert action.help == "rescale the guided prediction (default: 0.7)"
    help_text = sample.format_help()
    assert "--cfg-rescale CFG_RESCALE" in help_text and "rescale the guided prediction (default: 0.7)" in help_text
    args = build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o", "--cfg-rescale", "0.25"])
    assert resolve_config(args, plus).cfg_rescale == 0.25
    args = build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o"])
    assert resolve_config(args, plus).cfg_rescale == 0.7  # not given: the model's default, not None


class Kinds(StrictModel):
    path: Path = Field(description="a path")
    mode: Literal["a", "b"] = "a"
    flag: bool = True
    window: tuple[int, int] | None = None
    names: list[str] = Field(default_factory=lambda: ["x", "y"])
    shares: dict[str, float] = Field(default_factory=lambda: {"train": 1.0})
    nested: StrictModel = StrictModel()
    free: dict[str, object] = Field(default_factory=dict)


def test_each_annotation_becomes_the_matching_option():
    parser = argparse.ArgumentParser()
    keys = add_config_flags(parser, Kinds, positional="path")
    assert keys == ["path", "mode", "flag", "window", "names", "shares"]  # a nested model and a free dict: --set only
    args = parser.parse_args(
        ["p", "--mode", "b", "--no-flag", "--window", "3", "9", "--names", "u,v", "w", "--shares", "a=0.5,b=0.5"]
    )
    cfg = resolve_config(args, Kinds)
    assert cfg == Kinds(
        path=Path("p"), mode="b", flag=False, window=(3, 9), names=["u", "v", "w"], shares={"a": 0.5, "b": 0.5}
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])  # Literal -> choices
    help_text = parser.format_help()
    assert "(default: x,y)" in help_text and "(default: train=1.0)" in help_text and "(default: on)" in help_text


# One value per option type, so that every option of every command can be given.
def _value(action: argparse.Action) -> list[str]:
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(list(action.choices)[-1])]
    if getattr(action.type, "__name__", "") == "KEY=VALUE":
        return ["train=0.5,test=0.5"]
    n = action.nargs if isinstance(action.nargs, int) else 1
    return ["3"] * n


@pytest.mark.parametrize("command", ["sample", "train", "tile", "summarize", "evaluate", "captions", "split", "demo"])
def test_every_option_lands_on_a_config_field(command):
    """Parse each option alone: the namespace names a real field and carries the value typed."""
    sub = _subparsers()[command]
    sub.format_help()
    model_path = {
        "sample": "histoldm.sampling.run:SampleConfig",
        "train": "histoldm.train.trainer:TrainConfig",
        "tile": "histoldm.data.tiling:TileConfig",
        "summarize": "histoldm.summaries.summarize:SummarizeConfig",
        "evaluate": "histoldm.evaluate.run:EvaluateConfig",
        "captions": "histoldm.data.captions:CaptionsConfig",
        "split": "histoldm.data.splits:SplitConfig",
        "demo": "histoldm.experiments.demo:DemoConfig",
    }[command]
    module, _, name = model_path.partition(":")
    model = getattr(__import__(module, fromlist=[name]), name)
    shell = ("help", "config", "overrides", "dry_run") + (
        ("threads",) if command != "demo" else ()
    )  # the stage shell's, not the config's
    options = [a for a in sub._actions if a.option_strings and a.dest not in shell]
    assert options
    for action in options:
        flag = action.option_strings[0]
        args = build_parser().parse_args([command, flag, *_value(action)])
        keys = getattr(args, KEYS_DEST)
        assert action.dest in keys, flag
        if action.dest.startswith("recipe."):  # an experiment's stage section: the recipe validates its keys
            resolve_config(args, model)
        else:
            nested_field(model, action.dest)  # raises KeyError for a key the model does not have
        assert getattr(args, action.dest) is not None, flag


def test_old_option_spellings_still_fill_the_same_keys():
    from histoldm.data.captions import CaptionsConfig
    from histoldm.data.splits import SplitConfig
    from histoldm.data.tiling import TileConfig
    from histoldm.experiments.config import DemoConfig
    from histoldm.summaries.summarize import SummarizeConfig
    from histoldm.train.trainer import TrainConfig

    parse = build_parser().parse_args
    assert (
        resolve_config(parse(["summarize", "r.csv", "--out", "s.jsonl", "--timeout", "5"]), SummarizeConfig).timeout_s
        == 5.0
    )
    cfg = resolve_config(
        parse(["captions", "--levels", "low,mid,high", "st"]), CaptionsConfig
    )  # one value, then the store
    assert cfg.levels == ["low", "mid", "high"] and cfg.store == Path("st")
    cfg = resolve_config(
        parse(["split", "--out", "s.json", "--store", "st", "--fractions", "train=0.5,test=0.5"]), SplitConfig
    )
    assert cfg.fractions == {"train": 0.5, "test": 0.5}
    assert resolve_config(parse(["tile", "sl", "--out", "st", "--shard", "1/4"]), TileConfig).shard == (1, 4)
    assert resolve_config(parse(["demo", "--train-steps", "7"]), DemoConfig).recipe.train["max_steps"] == 7
    cfg = resolve_config(parse(["train", "--config", "pathldm", "--init-from", "b"]), TrainConfig)
    assert cfg.model.init_from == Path("b")


def test_set_wins_over_an_option_for_the_same_key():
    from histoldm.sampling.run import SampleConfig

    args = build_parser().parse_args(
        ["sample", "--checkpoint", "m", "--out", "o", "--steps", "10", "--set", "steps=20"]
    )
    assert resolve_config(args, SampleConfig).steps == 20


@pytest.mark.parametrize("sets", [["a=1", "a.b=2"], ["a.b=2", "a=1"], ["x.y={z: 1}", "x.y.z=2"]])
def test_overlapping_set_keys_are_a_one_line_error(sets, capsys):
    argv = ["split", "--out", "s.json"] + [w for s in sets for w in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    outer, inner = sorted((s.split("=")[0] for s in sets), key=len)
    assert err.count("\n") == 1 and f"--set {outer}" in err and f"--set {inner}" in err and "overlap" in err


def test_every_command_help_works_and_ends_with_its_example():
    for name, sub in _subparsers().items():
        text = sub.format_help()
        assert f"example:\n  histoldm {name}" in text, name


def test_top_level_help_imports_no_stage():
    """Options come from the stage's model only when its command is used: `histoldm --help` stays instant."""
    stages = tuple(
        f"histoldm.{s}."
        for s in ("data", "text", "models", "train", "sampling", "evaluate", "summaries", "experiments")
    )
    code = (
        "import sys\nfrom histoldm.cli import build_parser\nbuild_parser().format_help()\n"
        f"print(sorted(m for m in sys.modules if m == 'torch' or m.startswith({stages!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_dtype_options_take_the_older_spellings():
    """A dtype field normalises bf16/fp16/fp32 itself, so the option must not refuse them first."""
    from histoldm.sampling.run import SampleConfig

    args = build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o", "--dtype", "bf16"])
    assert resolve_config(args, SampleConfig).dtype == "bfloat16"
    with pytest.raises(UserError, match="dtype"):
        resolve_config(
            build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o", "--dtype", "half"]), SampleConfig
        )

"""The CLI is derived from the config models: a new field is a new option, every option lands in the config."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, create_model

from histoldm.cli import build_parser, main
from histoldm.commands import stages
from histoldm.commands._common import resolve_config
from histoldm.commands._flags import KEYS_DEST, add_config_flags, nested_field
from histoldm.config import StrictModel
from histoldm.errors import UserError
from histoldm.sampling.config import SampleConfig

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    parser.format_help()  # adds the derived options
    return next(a for a in parser._actions if flag in a.option_strings)


def test_a_new_config_field_is_an_option_with_its_type_help_and_default(monkeypatch):
    plus = create_model(
        "SampleConfigPlus",
        __base__=SampleConfig,
        cfg_rescale=(float, Field(0.7, ge=0, description="rescale the guided prediction")),
    )
    rows = tuple(replace(c, config=plus) if c.name == "sample" else c for c in stages.COMMANDS)
    monkeypatch.setattr(stages, "COMMANDS", rows)  # as if the field were written into SampleConfig
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
    model = next(c.config for c in stages.COMMANDS if c.name == command)
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
    from histoldm.data.config import CaptionsConfig, SplitConfig, TileConfig
    from histoldm.experiments.config import DemoConfig
    from histoldm.summaries.config import SummarizeConfig
    from histoldm.train.config import TrainConfig

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
    from histoldm.sampling.config import SampleConfig

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


def test_help_imports_no_heavy_library_and_no_stage_code():
    """`histoldm --help` and every `histoldm <command> --help` import the torch-free config modules and no stage
    code: help stays instant. One process walks them all and names the first command that pulled torch (or
    another heavy library) in, then lists the stage modules other than configs that the walk imported."""
    stages = tuple(
        f"histoldm.{s}."
        for s in ("data", "text", "models", "train", "sampling", "evaluate", "summaries", "experiments")
    )
    code = (
        "import sys\nfrom histoldm.cli import build_parser\n"
        "parser = build_parser()\nparser.format_help()\n"
        "subs = next(a for a in parser._actions if a.choices and hasattr(a, 'add_parser')).choices\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'numpy', 'pyarrow')\n"
        "for name in [None, *subs]:\n"
        "    if name: subs[name].format_help()\n"
        "    if any(h in sys.modules for h in heavy): print(name or '--help'); break\n"
        f"print(sorted(m for m in sys.modules if m.startswith({stages!r}) and not m.endswith('.config')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert (
        out.stdout.strip() == "['histoldm.models.presets']"
    )  # the UNet presets: plain dicts a recipe is checked against


def test_the_cli_names_no_module_by_string():
    """Config classes and run functions are imported, never named as 'histoldm.x.y:Name' strings that grep and
    type checkers cannot follow."""
    import re

    files = [ROOT / "src/histoldm/cli.py", *sorted((ROOT / "src/histoldm/commands").glob("*.py"))]
    pattern = re.compile(r"histoldm(\.\w+)+:\w+")
    found = [f"{f.name}: {m.group(0)}" for f in files for m in pattern.finditer(f.read_text(encoding="utf-8"))]
    assert found == []


def test_dtype_options_take_the_older_spellings():
    """A dtype field normalises bf16/fp16/fp32 itself, so the option must not refuse them first."""
    from histoldm.sampling.config import SampleConfig

    args = build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o", "--dtype", "bf16"])
    assert resolve_config(args, SampleConfig).dtype == "bfloat16"
    with pytest.raises(UserError, match="dtype"):
        resolve_config(
            build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o", "--dtype", "half"]), SampleConfig
        )


@pytest.mark.parametrize("command", ["sample", "sample-region", "encode-text"])
def test_the_old_numerics_key_is_a_one_line_error_naming_the_new_one(command, tmp_path, capsys):
    """`precision` names autocast dtypes only; a sample or encode-text config still giving the numerics profile
    under it is told the key that took its job, in the file it came from."""
    old = tmp_path / "old.yaml"
    old.write_text("precision: pathldm\n", encoding="utf-8")
    assert main([command, "--config", str(old)]) == 2
    err = capsys.readouterr().err
    assert err == f"histoldm {command}: error: {old}: config key 'precision' is now 'numerics'\n"


@pytest.mark.parametrize("preset", ["paper", "fast", "turbo"])
def test_solver_fields_default_to_the_presets_values_and_a_given_one_wins(preset):
    """steps, guidance, guidance_interval and solver default to None = the preset's (their help lists each
    preset's value); a value given beside the preset overrides it, and None for guidance_interval means every step."""
    from histoldm.sampling.config import SAMPLE_PRESETS

    fields = SampleConfig.model_fields
    assert all(fields[k].default is None and "from --preset" in fields[k].description for k in SAMPLE_PRESETS[preset])
    cfg = SampleConfig(checkpoint="m", out="o", preset=preset)
    assert {k: getattr(cfg, k) for k in SAMPLE_PRESETS[preset]} == SAMPLE_PRESETS[preset]
    args = build_parser().parse_args(["sample", "--checkpoint", "m", "--out", "o", "--preset", preset, "--steps", "3"])
    assert resolve_config(args, SampleConfig).steps == 3
    assert SampleConfig(checkpoint="m", out="o", preset=preset, steps=None).steps == SAMPLE_PRESETS[preset]["steps"]
    if preset == "fast":
        assert SampleConfig(checkpoint="m", out="o", preset=preset, guidance_interval=None).guidance_interval is None


def _models_under(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every config model nested in its fields (optional ones included)."""
    found = [model]
    for f in model.model_fields.values():
        for tp in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in found:
                found += [m for m in _models_under(tp) if m not in found]
    return found


@pytest.mark.parametrize(
    "command",
    [c for c in stages.COMMANDS if not c.config.__module__.startswith("histoldm.experiments.")],
    ids=lambda c: c.name,
)
def test_every_config_field_nested_ones_too_has_a_description(command):
    """`--help` and the docs show a field's description; a `#` comment beside it reaches no user."""
    models = _models_under(command.config)
    assert [f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not f.description] == []


def test_the_old_numerics_key_in_an_experiments_recipe_names_the_whole_key(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("recipe:\n  sample:\n    precision: pathldm\n", encoding="utf-8")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--config", str(old)]) == 2
    err = capsys.readouterr().err
    assert err == f"histoldm demo: error: {old}: config key 'recipe.sample.precision' is now 'numerics'\n"


def test_python_m_histoldm_exits_with_the_commands_status(tmp_path):
    """Scripts and CI read the exit status of `python -m histoldm` as they read the `histoldm` script's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: split.json\nno_such_key: 1\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "histoldm", "split", "--config", str(bad)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2 and "unknown config key 'no_such_key'" in run.stderr

"""The experiment recipe: stage settings as sections of the stages' own configs, checked before any compute
(the end-to-end runs are in test_e2e.py)."""

from pathlib import Path

import pytest

from histoldm.cli import main
from histoldm.config import load_config, read_yaml
from histoldm.config_files import SHIPPED_DIR
from histoldm.experiments.chain import evaluate_config, sample_config, train_config, vae_config
from histoldm.experiments.config import DemoConfig, ModelRecipe, SweepConfig

CONFIGS = SHIPPED_DIR
HERE = Path(".")


@pytest.mark.parametrize(
    "override, says",
    [
        ("recipe.train.optim.lrr=1", "unknown config key 'recipe.train.optim.lrr'"),
        ("recipe.sample.steps=0", "config key 'recipe.sample.steps': Input should be greater than or equal to 1"),
        ("recipe.train.run_dir=elsewhere", "config key 'recipe.train.run_dir': set by the experiment"),
        ("recipe.train.data.latents=elsewhere", "config key 'recipe.train.data.latents': set by the experiment"),
        ("recipe.sample.seed=3", "config key 'recipe.sample.seed': set by the experiment from recipe.seed"),
        ("recipe.distill.teacher=elsewhere", "config key 'recipe.distill.teacher': set by the experiment"),
        ("recipe.distill.max_stepz=3", "unknown config key 'recipe.distill.max_stepz'"),
        (
            "recipe.train.model.unet_preset=tiny-midd",
            "config key 'recipe.train.model.unet_preset': unknown UNet preset 'tiny-midd'",
        ),
    ],
)
def test_demo_refuses_a_bad_stage_key_in_one_line_before_any_compute(tmp_path, capsys, override, says):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "command line" in err
    assert not out.exists()  # nothing ran


def test_demo_train_steps_flag_is_the_train_sections_max_steps(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train-steps", "0"]) == 2
    assert "config key 'recipe.train.max_steps': Input should be greater than 0" in capsys.readouterr().err


def test_demo_with_turbo_is_a_flag_and_a_key():
    from histoldm.cli import build_parser
    from histoldm.commands._common import resolve_config

    parse = build_parser().parse_args
    assert not resolve_config(parse(["demo"]), DemoConfig).with_turbo
    assert resolve_config(parse(["demo", "--with-turbo"]), DemoConfig).with_turbo
    assert resolve_config(parse(["demo", "--set", "with_turbo=true"]), DemoConfig).with_turbo


def test_the_student_samples_the_turbo_preset_with_the_recipes_other_sample_keys():
    """--with-turbo's sampler: the turbo preset's solver settings replace the recipe's, its other keys stay."""
    recipe = ModelRecipe.model_validate({"sample": {"steps": 7, "solver": "dpmpp", "batch_size": 3}})
    cfg = sample_config(recipe, HERE, HERE, HERE, 0, HERE, preset="turbo")
    assert (cfg.solver, cfg.steps, cfg.guidance_interval, cfg.batch_size) == ("lcm", 4, None, 3)
    assert (sample_config(recipe, HERE, HERE, HERE, 0, HERE).solver, cfg.preset) == ("dpmpp", "turbo")


def test_sweep_yaml_typo_names_the_file_and_the_key(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"out: {tmp_path / 'sweep'}\nrecipe:\n  encode_latents:\n    batch_size: 8\n    wrokers: 2\n")
    assert main(["sweep", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{config}: unknown config key 'recipe.encode_latents.wrokers'")
    assert not (tmp_path / "sweep").exists()


def test_sweep_seeds_repeated_name_the_key(tmp_path, capsys):
    assert main(["sweep", "--config", "sweep_demo", "--set", "seeds=[0,0]", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip().endswith("command line: config key 'seeds': each seed once (got [0, 0])")
    assert not (tmp_path / "s").exists()


def test_sweep_refuses_a_fixed_text_length_that_each_budget_would_override():
    with pytest.raises(Exception, match="'recipe.encode_text.max_length': set per budget"):
        load_config(SweepConfig, None, {"recipe": {"encode_text": {"max_length": 77}}})
    assert load_config(SweepConfig, None, {"text_context": "recipe", "recipe": {"encode_text": {"max_length": 77}}})


def test_shipped_sweep_configs_load_and_reach_their_stages():
    tcga = load_config(SweepConfig, CONFIGS / "sweep_token_lengths.yaml").recipe
    train = train_config(tcga, "x", HERE, HERE, HERE, HERE, HERE)
    assert train.max_steps == 460000 and train.model.unet_preset == "pathldm" and train.data.workers > 0
    assert train.checkpoint_every < train.max_steps and train.keep_checkpoints > 1
    assert evaluate_config(tcga, HERE, HERE, HERE, HERE, 1.0).device == "cuda"
    demo = load_config(SweepConfig, CONFIGS / "sweep_demo.yaml").recipe
    assert train_config(demo, "x", HERE, HERE, HERE, HERE, HERE).max_steps == 1000  # the demo's recipe


def test_a_short_run_checkpoints_at_its_end():
    """The stages clamp their own checkpoint interval to the run; a shorter interval is kept."""
    recipe = ModelRecipe(train={"max_steps": 100}, train_vae={"steps": 30})
    assert train_config(recipe, "x", HERE, HERE, HERE, HERE, HERE).checkpoint_every == 100
    assert vae_config(recipe, HERE, HERE, HERE).checkpoint_every == 30
    given = ModelRecipe(train={"max_steps": 100, "checkpoint_every": 40, "precision": "bf16"})
    train = train_config(given, "x", HERE, HERE, HERE, HERE, HERE)
    assert (train.checkpoint_every, train.precision) == (40, "bfloat16")


def test_the_demo_runs_what_demo_yaml_says():
    """configs/demo.yaml is the demo's recipe: `histoldm demo` and `--config demo` are one config, and a
    --set changes its one key, the file's other settings kept."""
    shipped = read_yaml(CONFIGS / "demo.yaml")["recipe"]
    assert DemoConfig() == load_config(DemoConfig, CONFIGS / "demo.yaml")
    assert DemoConfig().recipe.train == shipped["train"]
    changed = load_config(DemoConfig, None, {"recipe": {"train": {"max_steps": 600}}}).recipe
    assert changed.train == {**shipped["train"], "max_steps": 600} and changed.sample == shipped["sample"]
    assert changed.autoencoder == shipped["autoencoder"]
    knobs = ("image_size", "autoencoder", "seed", "n_samples")
    assert ModelRecipe().model_dump(include=set(knobs)) == {k: shipped[k] for k in knobs}  # one set of defaults


def test_a_sweep_recipe_is_read_over_the_demos():
    tcga = load_config(SweepConfig, CONFIGS / "sweep_token_lengths.yaml").recipe
    assert tcga.evaluate["adherence"] is True  # left out there: the demo's
    assert tcga.evaluate["fid_method"] == "sqrtm"  # given there

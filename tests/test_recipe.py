"""The experiment recipe: stage settings as sections of the stages' own configs, checked before any compute
(the end-to-end runs are in test_e2e.py)."""

from pathlib import Path

import pytest

from histoldm.cli import main
from histoldm.config import load_config
from histoldm.config_files import SHIPPED_DIR
from histoldm.experiments.chain import ModelRecipe, evaluate_config, train_config, vae_config
from histoldm.experiments.sweep import SweepConfig

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
        (
            "recipe.autoencoder=models/vq",
            "config key 'recipe.train_vae': used only when recipe.autoencoder is a KL preset",
        ),
        (
            "recipe.train.model.unet_preset=tiny-midd",
            "config key 'recipe.train.model.unet_preset': unknown UNet preset 'tiny-midd'",
        ),
    ],
)
def test_demo_refuses_a_bad_stage_key_in_one_line_before_any_compute(tmp_path, capsys, override, says):
    out = tmp_path / "demo"
    extra = ["--set", "recipe.train_vae.steps=4"] if "autoencoder" in override else []
    assert main(["demo", "--out", str(out), *extra, "--set", override]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "command line" in err
    assert not out.exists()  # nothing ran


def test_demo_train_steps_flag_is_the_train_sections_max_steps(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train-steps", "0"]) == 2
    assert "config key 'recipe.train.max_steps': Input should be greater than 0" in capsys.readouterr().err


def test_sweep_yaml_typo_names_the_file_and_the_key(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"out: {tmp_path / 'sweep'}\nrecipe:\n  encode_latents:\n    batch_size: 8\n    wrokers: 2\n")
    assert main(["sweep", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{config}: unknown config key 'recipe.encode_latents.wrokers'")
    assert not (tmp_path / "sweep").exists()


def test_sweep_refuses_a_fixed_text_length_that_each_budget_would_override():
    with pytest.raises(Exception, match="'recipe.encode_text.max_length': set per budget"):
        load_config(SweepConfig, None, {"recipe": {"encode_text": {"max_length": 77}}})
    assert load_config(SweepConfig, None, {"text_context": "recipe", "recipe": {"encode_text": {"max_length": 77}}})


def test_shipped_sweep_configs_load_and_reach_their_stages():
    tcga = load_config(SweepConfig, CONFIGS / "sweep_token_lengths.yaml").recipe
    train = train_config(tcga, "x", HERE, HERE, HERE, HERE, HERE)
    assert train.max_steps == 460000 and train.model.unet_preset == "pathldm" and train.data.workers > 0
    assert train.checkpoint_every < train.max_steps and train.keep_checkpoints > 1
    assert evaluate_config(tcga, HERE, HERE, HERE, HERE, 200000, 1.0).device == "cuda"
    demo = load_config(SweepConfig, CONFIGS / "sweep_demo.yaml").recipe
    assert train_config(demo, "x", HERE, HERE, HERE, HERE, HERE).max_steps == 300


def test_derived_defaults_yield_to_what_the_user_gave():
    """A short run checkpoints at its end and KID subsets shrink to the set, unless the user said otherwise."""
    recipe = ModelRecipe(train={"max_steps": 100}, train_vae={"steps": 30})
    assert train_config(recipe, "x", HERE, HERE, HERE, HERE, HERE).checkpoint_every == 100
    assert vae_config(recipe, HERE, HERE, HERE).checkpoint_every == 30
    assert evaluate_config(recipe, HERE, HERE, HERE, HERE, 10, 1.0).kid_subset_size == 10
    given = ModelRecipe(
        train={"max_steps": 100, "checkpoint_every": 7000, "precision": "bf16"}, evaluate={"kid_subset_size": 500}
    )
    train = train_config(given, "x", HERE, HERE, HERE, HERE, HERE)
    assert (train.checkpoint_every, train.precision) == (7000, "bfloat16")
    assert evaluate_config(given, HERE, HERE, HERE, HERE, 10, 1.0).kid_subset_size == 500

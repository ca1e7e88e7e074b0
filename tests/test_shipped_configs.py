"""The configs ship inside the package: named with `--config NAME` from any folder, listed and printed by
`histoldm config`, one copy (the repository's configs/ is a link to it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from histoldm.cli import main
from histoldm.config_files import SHIPPED_DIR, shipped_configs

ROOT = Path(__file__).resolve().parents[1]


def test_config_list_and_show_work_from_a_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: only the package's
    assert main(["config", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["demo", "histoldm", "pathldm", "sweep_demo", "sweep_token_lengths", "train_tiny"]
    assert main(["config", "show", "pathldm"]) == 0
    shown = capsys.readouterr().out
    assert shown == (SHIPPED_DIR / "pathldm.yaml").read_text(encoding="utf-8")
    (tmp_path / "my.yaml").write_text(shown.replace("max_steps: 460000", "max_steps: 7"), encoding="utf-8")
    assert main(["train", "--config", "my.yaml", "--dry-run"]) == 0  # the copy is a working config
    assert yaml.safe_load(capsys.readouterr().out)["max_steps"] == 7


def test_config_names_a_shipped_config_wherever_config_is_taken(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("pathldm", "pathldm.yaml"):
        assert main(["train", "--config", name, "--dry-run"]) == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        assert (cfg["name"], cfg["model"]["unet_preset"]) == ("pathldm", "pathldm")
    assert main(["sweep", "--config", "sweep_demo", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["budgets"] == [10, 35, 154]


def test_a_missing_config_path_is_one_line_naming_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "configs/histoldm.yaml"]) == 2  # a path is never taken for a shipped name
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "configs/histoldm.yaml: config file not found" in err
        and "--config demo | histoldm |" in err
    )
    assert main(["config", "show", "histoldn"]) == 2
    assert "histoldn: no shipped config of that name" in capsys.readouterr().err
    (tmp_path / "pathldm").write_text(
        "max_steps: 3\ndata: {latents: l, text_cache: t, captions: c.parquet}\n"
    )  # a file of that name in the folder wins over the shipped one
    assert main(["train", "--config", "pathldm", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["max_steps"] == 3


def test_one_copy_the_repository_path_is_a_link_to_the_package(monkeypatch, capsys):
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == SHIPPED_DIR
    assert set(shipped_configs()) == {p.stem for p in SHIPPED_DIR.iterdir()}  # nothing but configs there
    monkeypatch.chdir(ROOT)
    assert (
        main(["sweep", "--config", "configs/sweep_demo.yaml", "--dry-run"]) == 0
    )  # the repository's spelling still works
    capsys.readouterr()

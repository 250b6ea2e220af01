"""Typed configs: YAML presets with `base:` inheritance, dotted overrides, errors naming the key, --help."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from worldvla.config import ConfigError, load_config, parse_cli


@dataclass
class Optim:
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)


def write(path, text):
    path.write_text(text)
    return path


def test_precedence_defaults_then_base_then_file_then_overrides(tmp_path):
    write(tmp_path / "base.yaml", "steps: 20\noptim:\n  lr: 0.5\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nname: child\n")
    cfg = load_config(Run, child, ["optim.betas=[0.1, 0.2]", "steps=7"])
    assert (cfg.name, cfg.steps, cfg.optim.lr, cfg.optim.betas) == ("child", 7, 0.5, [0.1, 0.2])
    assert load_config(Run).optim.lr == 1e-4  # the file did not leak into the defaults


def test_unknown_keys_name_the_file_or_the_override(tmp_path):
    bad = write(tmp_path / "bad.yaml", "optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*lrr.*valid"):
        load_config(Run, bad)
    with pytest.raises(ConfigError, match=r"stepz.*overrides"):
        load_config(Run, None, ["stepz=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="steps"):
        load_config(Run, None, ["steps=many"])


def test_cli_forms_and_help_shows_the_preset_values(tmp_path, capsys):
    preset = write(tmp_path / "p.yaml", "optim:\n  lr: 0.25\n")
    cfg = parse_cli(Run, ["--config", str(preset), "--steps", "3", "name=x"])
    assert (cfg.steps, cfg.name, cfg.optim.lr) == (3, "x", 0.25)
    with pytest.raises(SystemExit) as exit_:
        parse_cli(Run, ["--config", str(preset), "steps=4", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "optim.lr (float) = 0.25" in out and "steps (int) = 4" in out

"""Typed configs: YAML presets with `base:` inheritance, dotted overrides, errors naming the key, --help."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

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


# -- one override grammar for every CLI (issue 15) and clear errors (issue 14 item 8) -------------
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Flags:
    on: bool = False
    maybe: int | None = 3
    tags: list[str] = field(default_factory=list)
    path: Path | None = None
    kind: str = "a"


def test_train_overrides_read_by_the_declared_type_in_every_form():
    from worldvla.train.config import TrainConfig

    cfg = parse_cli(TrainConfig, ["--config_path", str(ROOT / "configs" / "tiny.yaml"), "train.lr=1e-5",
                                  "--train.max-steps", "3", "--model.action-mask=false", "data.kinds=[world]",
                                  "--train.betas", "[0.9, 0.99]"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1e-5
    assert type(cfg.train.max_steps) is int and cfg.train.max_steps == 3
    assert cfg.model.action_mask is False and cfg.data.kinds == ["world"] and cfg.train.betas == [0.9, 0.99]
    assert cfg.data.recipe.resolution == 64  # from configs/tiny.yaml: --config_path is --config
    for flag in (["--config", str(ROOT / "configs" / "tiny.yaml")], [f"--config={ROOT / 'configs' / 'tiny.yaml'}"],
                 ["--config-path", str(ROOT / "configs" / "tiny.yaml")]):
        assert parse_cli(TrainConfig, flag).data.recipe.resolution == 64


def test_values_follow_the_field_type_not_yaml_guessing():
    cfg = parse_cli(Flags, ["on=true", "maybe=null", "tags=[1, b]", "path=out/x", "kind=123"])
    assert (cfg.on, cfg.maybe, cfg.tags, cfg.path, cfg.kind) == (True, None, ["1", "b"], Path("out/x"), "123")
    assert parse_cli(Flags, ["--on", "no", "--maybe", "7", "kind=null"]) == Flags(on=False, maybe=7, kind="null")
    assert parse_cli(Flags, ["kind=''", 'path="a b"']) == Flags(kind="", path=Path("a b"))  # YAML quotes
    assert parse_cli(Run, ["optim.lr=5e-6", 'optim.betas=[1e-1, 0.2]']).optim == Optim(5e-6, [0.1, 0.2])


def test_yaml_files_read_exponent_floats(tmp_path):
    preset = write(tmp_path / "p.yaml", "optim:\n  lr: 1e-5\n")
    assert load_config(Run, preset).optim.lr == 1e-5  # YAML 1.1 would give the string '1e-5'


@pytest.mark.parametrize("arg, key, value, tp", [
    ("optim.lr=abc", "optim.lr", "abc", "float"),
    ("--steps=3.5", "steps", "3.5", "int"),
    ("on=maybe", "on", "maybe", "bool"),
    ("tags=[a, b", "tags", "[a, b", "list"),
])
def test_unreadable_cli_values_are_one_line_naming_key_value_and_type(arg, key, value, tp, capsys):
    cls = Flags if key in ("on", "tags") else Run
    with pytest.raises(SystemExit) as exit_:
        parse_cli(cls, [arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and repr(value) in err and tp in err, err


def test_cli_grammar_errors(capsys):
    for argv, says in ((["--steps"], "--steps needs a value"), (["steps"], "unexpected argument 'steps'"),
                       (["--config"], "--config needs a YAML file")):
        with pytest.raises(SystemExit) as exit_:
            parse_cli(Run, argv)
        assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_a_scalar_or_list_where_a_section_belongs_names_the_file_and_field(tmp_path):
    write(tmp_path / "base.yaml", "optim: 5\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim:\n  lr: 0.1\n")  # the merge would hide it
    with pytest.raises(ConfigError, match=r"base\.yaml: optim is a section \(Optim\), got the int 5"):
        load_config(Run, child)
    listed = write(tmp_path / "listed.yaml", "optim: [0.1]\n")
    with pytest.raises(ConfigError, match=r"listed\.yaml: optim is a section \(Optim\), got a list"):
        load_config(Run, listed)
    empty = write(tmp_path / "empty.yaml", "optim:\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: optim is a section"):
        load_config(Run, empty)
    write(tmp_path / "typo.yaml", "optim:\n  lrr: 1\n")
    top = write(tmp_path / "top.yaml", "base: typo.yaml\nname: x\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key\(s\) \['lrr'\] in section optim \(Optim\); valid"):
        load_config(Run, top)


def test_every_help_example_parses_back():
    """What --help prints as examples (`cli_examples`) is accepted by the same config's parser."""
    from worldvla.config import cli_examples
    from worldvla.data.concat import ConcatConfig
    from worldvla.data.conversations import ConversationsConfig
    from worldvla.data.recording import RecordScriptedConfig
    from worldvla.data.regenerate import RegenerateConfig
    from worldvla.demo import DemoConfig
    from worldvla.eval.config import EvalConfig
    from worldvla.serve.server import ServeConfig
    from worldvla.train.config import TrainConfig

    for cls in (Run, Flags, TrainConfig, EvalConfig, ServeConfig, DemoConfig, RegenerateConfig,
                ConversationsConfig, ConcatConfig, RecordScriptedConfig):
        examples = cli_examples(cls)
        assert examples, cls
        argv = shlex.split(" ".join(examples))
        assert parse_cli(cls, argv) == cls(), (cls, examples)


def test_bool_flags_and_bare_words():
    from worldvla.config import cli_overrides

    assert parse_cli(Flags, ["--on"]).on is True and parse_cli(Flags, ["--on", "false"]).on is False
    assert parse_cli(Flags, ["--on", "--kind", "b"]) == Flags(on=True, kind="b")
    assert cli_overrides(Flags, ["x/y", "--on"], positional="kind") == (None, ["kind=x/y", "on=true"], False)
    assert parse_cli(Flags, ["a", "b", "--maybe", "1"], positional="tags") == Flags(tags=["a", "b"], maybe=1)

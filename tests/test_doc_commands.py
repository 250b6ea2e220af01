"""Every command the README, the docs and the CLIs' own --help texts show is accepted by the one
CLI grammar (worldvla.config.cli_overrides) and names real fields of the right type (load_config);
`exps/` scripts are one call of one launcher. Nothing is run: this reads the commands."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from worldvla.cli import COMMANDS
from worldvla.config import ConfigError, cli_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md", ROOT / "worldvla" / "train" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"&", "&&", "|", "||", ";", ">", ">>", "2>&1"}
PLACEHOLDERS = re.compile(r"^(\.\.\.|key(\.sub)?=value|key\.sub=value\.\.\.)$")

# module or script -> (config class "module:Class", bare-word field)
TARGETS = {
    "worldvla.demo": ("worldvla.demo:DemoConfig", None),
    "worldvla.data.record_scripted": ("worldvla.data.recording:RecordScriptedConfig", None),
    "libero_util/record_scripted_demos.py": ("worldvla.data.recording:RecordScriptedConfig", None),
    "libero_util/record_demos.py": ("worldvla.data.cli:RecordConfig", None),
    "worldvla.data.regenerate": ("worldvla.data.regenerate:RegenerateConfig", None),
    "libero_util/regenerate.py": ("worldvla.data.regenerate:RegenerateConfig", None),
    "libero_util/save_img_action.py": ("worldvla.data.export:ExportConfig", None),
    "worldvla.data.export": ("worldvla.data.export:ExportConfig", None),
    "worldvla.data.conversations": ("worldvla.data.conversations:ConversationsConfig", None),
    "data/conversations.py": ("worldvla.data.conversations:ConversationsConfig", None),
    "worldvla.data.pretokenize": ("worldvla.data.pretokenize:PretokenizeConfig", None),
    "data/pretokenize.py": ("worldvla.data.pretokenize:PretokenizeConfig", None),
    "worldvla.data.concat": ("worldvla.data.concat:ConcatConfig", None),
    "data/concatenate.py": ("worldvla.data.concat:ConcatConfig", None),
    "data/lerobot_to_hdf5.py": ("worldvla.data.lerobot:LeRobotImportConfig", None),
    "worldvla.data.lerobot": ("worldvla.data.lerobot:LeRobotImportConfig", None),
    "worldvla.train": ("worldvla.train.config:TrainConfig", None),
    "worldvla.train.tiny_data": ("worldvla.train.tiny_data:TinyDataConfig", "out_dir"),
    "worldvla.train.lora_merge": ("worldvla.train.lora_merge:MergeConfig", "checkpoint"),
    "worldvla.eval.libero": ("worldvla.eval.config:EvalConfig", None),
    "worldvla.eval.libero merge": ("worldvla.eval.libero:MergeConfig", "dirs"),
    "worldvla.eval.imagine": ("worldvla.eval.imagine:ImagineConfig", None),
    "worldvla.eval.video_metrics": ("worldvla.eval.video_metrics.__main__:VideoMetricsConfig", "folder"),
    "worldvla.serve": ("worldvla.serve.server:ServeConfig", None),
    "worldvla.testing.fit_vqgan": ("worldvla.testing.fit_vqgan:FitVQGANConfig", None),
}
COMMAND_TARGETS = {"worldvla " + name: module for name, (module, _) in COMMANDS.items()}


def config_class(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def unwrap_optional(tokens: list[str]) -> list[str]:
    """`[host=127.0.0.1]`, `[--metrics-dir DIR]`, `[kinds=[a,b]]` -> their content; drop placeholders."""
    out, depth = [], 0
    for tok in tokens:
        if tok.startswith("[") and not tok.startswith("[="):
            tok, depth = tok[1:], depth + 1
        while depth and tok.endswith("]") and tok.count("]") > tok.count("["):
            tok, depth = tok[:-1], depth - 1
        if tok and not PLACEHOLDERS.match(tok) and "|" not in tok.split("=")[0]:
            out.append(tok)
    return out


def commands_in(text: str) -> list[str]:
    """Shell lines that call a CLI, continuation lines joined, comments dropped."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip().lstrip("$ ").strip("`")
        for start in ("python ", "worldvla ", "bash exps/", "exps/", "NGPU=", "MUJOCO_GL=", "EVAL_WORKERS="):
            if line.startswith(start):
                found.append(line.split("  #")[0].split(" # ")[0].split("`")[0].split(" && ")[0])
                break
    return found


def parse_command(line: str):
    """-> (config class, preset or None, overrides) for a command of a worldvla CLI, or None."""
    line = re.sub(r"<[^<>]*>", "v", re.sub(r"\$\{?\w+\}?", "v", line))  # $VAR, <placeholder>
    tokens = shlex.split(line)
    ends = [i for i, tok in enumerate(tokens) if tok in SHELL_OPERATORS]
    tokens = unwrap_optional(tokens[:ends[0]] if ends else tokens)  # `cmd &`, `cmd | tee`: the command
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):  # environment assignments
        tokens.pop(0)
    if tokens[:1] == ["bash"]:
        tokens.pop(0)
    preset, positional = None, None
    if tokens[0].startswith("exps/"):
        script = ROOT / tokens[0]
        if not script.is_file():  # a pattern such as exps/train_<preset>.sh
            return None
        launch = re.search(r"launch_(train|eval) (configs/\S+\.yaml)", script.read_text())
        if not launch:
            return None
        kind, preset = launch.groups()
        spec = TARGETS["worldvla.train" if kind == "train" else "worldvla.eval.libero"][0]
        args = tokens[1:]
        if kind == "eval" and args and "=" not in args[0]:
            args = [f"policy={args[0]}", *args[1:]]
        return config_class(spec), ROOT / preset, None, args
    if tokens[0] == "worldvla":
        key, args = COMMAND_TARGETS.get(" ".join(tokens[:2])), tokens[2:]
    elif tokens[:2] == ["python", "-m"]:
        key, args = tokens[2], tokens[3:]
        if key == "worldvla.eval.libero" and args[:1] == ["merge"]:
            key, args = "worldvla.eval.libero merge", args[1:]
    elif tokens[0] == "python":
        key, args = tokens[1], tokens[2:]
    else:
        return None
    if key not in TARGETS:
        return None
    spec, positional = TARGETS[key]
    if key in ("data/lerobot_to_hdf5.py", "worldvla.data.lerobot"):
        from worldvla.data.lerobot import _normalise_argv

        args = _normalise_argv(args)
    return config_class(spec), None, positional, args


def all_commands() -> list[tuple[str, str]]:
    found = [(str(doc.relative_to(ROOT)), cmd) for doc in DOCS for cmd in commands_in(doc.read_text())]
    modules = {m for m in TARGETS if not m.endswith(".py") and " " not in m} | set(COMMAND_TARGETS.values())
    for module in sorted(modules):  # what each CLI's --help prints (its docstring)
        doc = importlib.import_module(module if module != "worldvla.eval.video_metrics" else module + ".__main__").__doc__
        found += [(module, cmd) for cmd in commands_in(doc or "")]
    for script in sorted(p for folder in ("libero_util", "data") for p in (ROOT / folder).glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        found += [(str(script.relative_to(ROOT)), cmd) for cmd in commands_in(doc)]
    return found


COMMANDS_SHOWN = all_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS_SHOWN) > 40
    assert {where for where, _ in COMMANDS_SHOWN} >= {"README.md", "data/README.md", "worldvla.eval.libero"}


@pytest.mark.parametrize("where, command", COMMANDS_SHOWN, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS_SHOWN])
def test_shown_command_parses(where, command):
    parsed = parse_command(command)
    if parsed is None:
        pytest.skip("not a worldvla config CLI")
    cls, preset, positional, args = parsed
    try:
        config, overrides, _ = cli_overrides(cls, args, positional)
        if config is not None:
            preset = ROOT / config
        load_config(cls, preset, overrides)
    except ConfigError as err:
        pytest.fail(f"{where}: {command!r}: {err}")


def test_every_train_and_eval_script_is_one_launcher_call():
    boilerplate = {"set -euo pipefail", 'ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"',
                   'source "$ROOT/exps/env.sh"', 'cd "$ROOT"'}
    scripts = [p for p in sorted((ROOT / "exps").glob("*.sh")) if re.match(r"(train|eval)_(libero|rynnvla|tiny|abl)",
                                                                           p.name)]
    assert len(scripts) >= 40
    for script in scripts:
        kind = script.name.split("_")[0]
        code = [line.strip() for line in script.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
        rest = [line for line in code if line not in boilerplate and line != f'source "$ROOT/exps/{kind}_launch.sh"']
        assert len(rest) == 1 and re.fullmatch(rf'launch_{kind} configs/\S+\.yaml "\$@"', rest[0]), (script.name, rest)
        assert (ROOT / rest[0].split()[1]).is_file(), script.name


def test_train_and_eval_scripts_never_install():
    """The per-suite scripts use the environment they find (exps/env.sh); installing is exps/setup.sh's job,
    which only the README's two commands (exps/demo.sh, exps/test.sh) run."""
    env = (ROOT / "exps" / "env.sh").read_text()
    code = "\n".join(line for line in env.splitlines() if not line.strip().startswith("#"))
    assert not re.search(r"\bpip\b|-m venv|\bconda\b|\buv\b|setup\.sh", code), code
    scripts = sorted(p for p in (ROOT / "exps").glob("*.sh") if p.name.startswith(("train_", "eval_")))
    assert len(scripts) >= 40
    for script in scripts:
        assert "setup.sh" not in re.sub(r"#.*", "", script.read_text()), f"{script.name} runs the installer"

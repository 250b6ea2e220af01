"""One knob, one name: each shared concept of the package is defined in one module and imported elsewhere.

Definitions are read with ast over worldvla/, so a second one is found wherever it hides: a module-level
constant, a class attribute, a function. One test per check; a new check gets its own test.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "worldvla"

# constant -> the module (relative to worldvla/) that holds its one definition
CONSTANTS = {
    "ACTION_DIM": "stats.py",
    "SAMPLE_KINDS": "recipe.py",
    "ACTION_MODES": "recipe.py",
    "FAMILIES": "recipe.py",
    "DECODE_MODES": "policy/decode.py",
}
# helper -> its one home
HELPERS = {
    "sha256_file": "recipe.py",
    "parse_ids": "config.py",
    "interleave_views": "data/processor.py",
}
# name -> the module every import of it names (a re-export elsewhere would be a second door)
IMPORT_HOMES = {
    "ModelConfig": "worldvla.model.config",
}
ROOT = PACKAGE.parent


def sources(package: Path = PACKAGE) -> dict[str, ast.Module]:
    return {str(p.relative_to(package)): ast.parse(p.read_text(), str(p)) for p in sorted(package.rglob("*.py"))}


def assigned_names(node: ast.AST) -> list[tuple[str, int, ast.AST | None]]:
    """(name, line, value) of every assignment to a plain name, at any depth (module, class or function);
    `A, B = ...` counts for both names (value None: not read element by element)."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Assign):
            for target in n.targets:
                if isinstance(target, ast.Name):
                    out.append((target.id, n.lineno, n.value))
                elif isinstance(target, (ast.Tuple, ast.List)):
                    out += [(e.id, n.lineno, None) for e in target.elts if isinstance(e, ast.Name)]
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            out.append((n.target.id, n.lineno, n.value))
    return out


def literal(value: ast.AST | None):
    try:
        return ast.literal_eval(value) if value is not None else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def constant_offenders(trees: dict[str, ast.Module], constants: dict[str, str], values: dict[str, tuple]) -> list[str]:
    """Where a constant is assigned other than once in its home, or its value (`values`) is spelled as a
    literal under another name (a mirrored tuple such as `OFFICIAL_FAMILIES = ("worldvla", "rynnvla002")`)."""
    bad = []
    for name, home in constants.items():
        found = [f"{path}:{line}" for path, tree in trees.items() for n, line, _ in assigned_names(tree) if n == name]
        if len(found) != 1 or not found[0].startswith(f"{home}:"):
            bad.append(f"{name}: assigned at {found or 'nowhere'}; want once, in worldvla/{home}")
    owner = {frozenset(v): name for name, v in values.items() if isinstance(v, tuple) and len(v) > 1}
    for path, tree in trees.items():
        for n, line, value in assigned_names(tree):
            v = literal(value)
            same = owner.get(frozenset(v)) if isinstance(v, (tuple, list)) and v else None
            if same and n != same:
                bad.append(f"{path}:{line}: {n} = {v!r} spells {same} again (import it from "
                           f"worldvla/{constants[same]})")
        # a set literal is the same choices whatever its order: `set(kinds) - {"action", "world"}`
        for node in ast.walk(tree):
            v = literal(node) if isinstance(node, ast.Set) else None
            if v and (same := owner.get(frozenset(v))):
                bad.append(f"{path}:{node.lineno}: {sorted(v)} spells {same} again (set({same}))")
    return bad


def home_values(constants: dict[str, str]) -> dict[str, object]:
    """Each constant's value, read from its home module (all of them import without torch)."""
    return {name: getattr(importlib.import_module("worldvla." + home.removesuffix(".py").replace("/", ".")), name)
            for name, home in constants.items()}


def helper_offenders(trees: dict[str, ast.Module], helpers: dict[str, str]) -> list[str]:
    bad = []
    for name, home in helpers.items():
        found = [(path, n.lineno) for path, tree in trees.items() for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
        if len(found) != 1 or found[0][0] != home:
            where = [f"{path}:{line}" for path, line in found]
            bad.append(f"{name}: defined at {where or 'nowhere'}; want once, in worldvla/{home}")
    return bad


def test_each_constant_has_one_definition():
    bad = constant_offenders(sources(), CONSTANTS, home_values(CONSTANTS))
    assert not bad, "constants defined more than once (import them from their home):\n" + "\n".join(bad)


def test_each_helper_has_one_definition():
    bad = helper_offenders(sources(), HELPERS)
    assert not bad, "helpers defined more than once:\n" + "\n".join(bad)


def import_offenders(trees: dict[str, ast.Module], homes: dict[str, str]) -> list[str]:
    """`from M import NAME` where NAME has another home than M."""
    return [f"{path}:{n.lineno}: imports {a.name} from {n.module}; want {homes[a.name]}"
            for path, tree in trees.items() for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            for a in n.names if a.name in homes and n.module != homes[a.name]]


def test_each_name_is_imported_from_its_home():
    trees = {f"{d}/{k}": v for d in ("worldvla", "benchmarks", "tests") for k, v in sources(ROOT / d).items()}
    bad = import_offenders(trees, IMPORT_HOMES)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("text", "found"), [
    ("from worldvla.model.config import ModelConfig\n", False),
    ("from worldvla.model.transformer import ModelConfig, Transformer\n", True),
    ("def f():\n    from worldvla.model.transformer import ModelConfig\n", True),
])
def test_the_import_check_finds_what_it_should(text, found):
    assert bool(import_offenders({"x.py": ast.parse(text)}, IMPORT_HOMES)) is found


PLANTED_HOMES = {"stats.py": "ACTION_DIM = 7\n", "recipe.py": 'FAMILIES = ("worldvla", "rynnvla002")\n'}


@pytest.mark.parametrize(("files", "found"), [
    ({}, False),
    ({"model/g.py": "ACTION_DIM = 7\n"}, True),  # a second home
    ({"stats.py": "X = 7\n", "model/g.py": "ACTION_DIM = 7\n"}, True),  # the wrong home
    ({"data/r.py": "class R:\n    ACTION_DIM: int = 7\n"}, True),  # class level
    ({"stats.py": "ACTION_DIM, STATE_DIM = 7, 8\n"}, False),  # a tuple target counts
    ({"data/r.py": "ACTION_DIM, X = 7, 8\n"}, True),
    ({"model/g.py": 'OFFICIAL_FAMILIES = ("rynnvla002", "worldvla")\n'}, True),  # the value, renamed
    ({"model/g.py": "from worldvla.recipe import FAMILIES\nOFFICIAL = FAMILIES\n"}, False),  # an import
    ({"model/g.py": 'def f(x):\n    return x in {"rynnvla002", "worldvla"}\n'}, True),  # a set literal, inline
    ({"model/g.py": 'def f(x):\n    return x in ("worldvla",)\n'}, False),  # one of them is not the choices
])
def test_the_constant_check_finds_what_it_should(tmp_path, files, found):
    for rel, text in {**PLANTED_HOMES, **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    bad = constant_offenders(sources(tmp_path), {"ACTION_DIM": "stats.py", "FAMILIES": "recipe.py"},
                             {"ACTION_DIM": 7, "FAMILIES": ("worldvla", "rynnvla002")})
    assert bool(bad) is found, bad


@pytest.mark.parametrize(("files", "found"), [
    ({"config.py": "def parse_ids(t):\n    pass\n"}, False),
    ({"config.py": "def parse_ids(t):\n    pass\n", "data/rec.py": "def parse_ids(t):\n    pass\n"}, True),
    ({"data/rec.py": "class A:\n    def parse_ids(self):\n        pass\n"}, True),  # a method, elsewhere
])
def test_the_helper_check_finds_what_it_should(tmp_path, files, found):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert bool(helper_offenders(sources(tmp_path), {"parse_ids": "config.py"})) is found

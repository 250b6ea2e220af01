"""The package's layers (docs/architecture.md): no module imports a module of a higher layer, and modules of
one layer that are peers (train and eval) do not import each other.

Every import of the package's own modules is read with ast, at the top of a module and inside functions
alike (a local import is as real an edge as a top-level one), relative imports resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "worldvla"

# Lowest first. A module may import its own layer and lower ones, except between the peers listed below.
LAYERS: list[tuple[str, ...]] = [
    ("vocab", "config", "errors", "atomic", "lockfile", "spans", "bins", "stats", "recipe"),  # ground floor: worldvla/<name>.py
    ("model",),
    ("tokenizers",),
    ("envs",),
    ("data", "testing"),
    ("policy",),
    ("train", "eval"),
    ("serve",),
    ("demo", "cli"),
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
# (importer, imported) pairs of one layer that are forbidden: train and eval both stand on policy, neither on
# the other; test fixtures may build data, data never depends on the test fixtures.
FORBIDDEN_PEERS = {("train", "eval"), ("eval", "train"), ("data", "testing")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    """`worldvla.eval.runner` -> eval; `worldvla.vocab` -> vocab; `worldvla` (the package itself) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def own_imports(path: Path) -> list[tuple[str, int]]:
    """(imported worldvla module, line) for every import statement of the file, wherever it stands."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from worldvla import vocab` imports the module worldvla.vocab
            names = [f"{base}.{a.name}" if base == "worldvla" else base for a in node.names]
        else:
            continue
        found += [(n, node.lineno) for n in names if n == "worldvla" or n.startswith("worldvla.")]
    return found


def offenders(files) -> list[str]:
    bad = []
    for path in files:
        src = unit_of(module_name(path))
        if src is None:
            continue
        for target, line in own_imports(path):
            dst = unit_of(target)
            if dst is None or dst == src:
                continue
            if dst not in RANK or src not in RANK:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target} (layer of {src!r} or {dst!r} "
                           "unknown: add it to LAYERS)")
            elif RANK[dst] > RANK[src] or (src, dst) in FORBIDDEN_PEERS:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} imports {target} "
                           f"(layer {RANK[dst]} {dst!r} above or beside layer {RANK[src]} {src!r})")
    return bad


def test_no_module_imports_a_higher_layer():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 100  # the whole package is read
    bad = offenders(files)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert units <= set(RANK), f"modules without a layer: {sorted(units - set(RANK))}"


@pytest.mark.parametrize(("source", "line", "found"), [
    ("model/x.py", "from worldvla.data.sequence import Span", True),  # up
    ("model/x.py", "def f():\n    from worldvla.tokenizers import text", True),  # up, function-local
    ("eval/x.py", "from worldvla.serve import client", True),  # up
    ("serve/x.py", "from worldvla.eval.config import DecodeConfig", False),  # down (allowed by rank)
    ("train/x.py", "from worldvla.eval import open_loop", True),  # a peer
    ("envs/x.py", "from ..data import raw_demos", True),  # relative, up
    ("policy/x.py", "from worldvla import vocab, spans", False),  # ground floor
    ("data/x.py", "from worldvla import testing", True),  # a peer that may not
    ("testing/x.py", "from worldvla.data.sequence import Sample", False),  # the allowed peer direction
    ("eval/x.py", "from worldvla.train import loop", True),  # the other peer direction
    ("spans.py", "from worldvla import vocab", False),  # within the ground floor
    ("tokenizers/x.py", "import worldvla.envs.libero", True),  # plain import, up
])
def test_the_check_finds_what_it_should(tmp_path, monkeypatch, source, line, found):
    """The checker on planted files: it must see top-level, local and relative imports."""
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "worldvla")
    path = tmp_path / "worldvla" / source
    path.parent.mkdir(parents=True)
    path.write_text(line + "\n")
    assert bool(offenders([path])) is found, offenders([path])

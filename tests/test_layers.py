"""The package's layers (docs/architecture.md): no module imports a module of a higher layer, and modules of
one layer that are peers (train and eval) do not import each other.

Every import of the package's own modules is read with ast, at the top of a module and inside functions
alike (a local import is as real an edge as a top-level one), relative imports resolved.
"""

from __future__ import annotations

import ast
import json
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


# -- imports at the top --------------------------------------------------------------------------------------
# A module's own-package imports stand in its top-level block, so the import graph checked above is the one a
# process runs. A function-local import of a worldvla module is allowed only here: (importer, imported module)
# -> why. Heavy optional third-party packages (libero, robosuite, deepspeed, wandb, pyarrow, ...) stay local
# inside the worldvla modules that need them, so only the two below are imported lazily.
ALLOWED_LOCAL: dict[tuple[str, str], str] = {
    ("worldvla.policy.interface", "worldvla.policy.client"):
        "msgpack + websockets (the serve extra): only a ws:// policy needs them, evaluating a checkpoint does not",
    ("worldvla.policy.interface", "worldvla.policy.policy"):
        "torch: eval's LIBERO worker processes import interface (as_chunk, import_object) and stay "
        "torch-free (no torch._dynamo before their GL context, envs.libero.load_compiler_before_gl)",
}


def resolve(node: ast.ImportFrom | ast.Import, package: str) -> list[str]:
    """The worldvla modules an import statement names (relative imports resolved against `package`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "worldvla" or a.name.startswith("worldvla.")]
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
    return [base] if base == "worldvla" or base.startswith("worldvla.") else []


def function_local_imports(path: Path) -> list[tuple[str, int]]:
    """(imported worldvla module, line) for every own-package import inside a function or method body."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [(target, node.lineno) for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))
                      for target in resolve(node, package)]
    return sorted(set(found), key=lambda t: t[1])


def local_import_offenders(files) -> tuple[list[str], set[tuple[str, str]]]:
    """(offending imports, allow-list entries that were used)."""
    bad, used = [], set()
    for path in files:
        importer = module_name(path)
        for target, line in function_local_imports(path):
            if (importer, target) in ALLOWED_LOCAL:
                used.add((importer, target))
            else:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: function-local import of {target} "
                           "(move it to the top; a cycle it makes is fixed where the import goes the wrong way)")
    return bad, used


def test_no_function_local_imports_of_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    bad, used = local_import_offenders(files)
    assert not bad, "function-local imports of worldvla modules:\n" + "\n".join(bad)
    stale = sorted(set(ALLOWED_LOCAL) - used)
    assert not stale, f"allow-list entries with no such import any more (remove them): {stale}"


@pytest.mark.parametrize(("source", "text", "allowed", "found"), [
    ("data/x.py", "def f():\n    from worldvla.vocab import Vocab", {}, True),
    ("data/x.py", "class A:\n    def m(self):\n        from ..envs import libero", {}, True),  # method, relative
    ("eval/x.py", "async def f():\n    import worldvla.eval.results", {}, True),
    ("data/x.py", "def f():\n    if True:\n        from . import shards", {}, True),  # nested block, same package
    ("data/x.py", "from worldvla.vocab import Vocab\ndef f():\n    return Vocab", {}, False),  # top level
    ("data/x.py", "def f():\n    from libero.libero import benchmark", {}, False),  # third party: not this check
    ("data/x.py", "def f():\n    from worldvla.envs import libero",
     {("worldvla.data.x", "worldvla.envs"): "planted reason"}, False),  # on the allow-list
    ("data/x.py", "def f():\n    from worldvla.envs import libero",
     {("worldvla.data.y", "worldvla.envs"): "planted reason"}, True),  # another module's entry does not cover it
])
def test_the_local_import_check_finds_what_it_should(tmp_path, monkeypatch, source, text, allowed, found):
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "worldvla")
    monkeypatch.setattr(f"{__name__}.ALLOWED_LOCAL", allowed)
    path = tmp_path / "worldvla" / source
    path.parent.mkdir(parents=True)
    path.write_text(text + "\n")
    bad, _ = local_import_offenders([path])
    assert bool(bad) is found, bad


def top_level_graph(files) -> dict[str, set[str]]:
    """module -> the worldvla modules its top-level statements import (outside `if TYPE_CHECKING:`), with the
    parent packages an import runs first; `from pkg import sub` counts as importing pkg.sub."""
    modules = {module_name(p) for p in files}
    graph = {}
    for path in files:
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        deps: set[str] = set()
        todo = list(ast.parse(path.read_text(), str(path)).body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
                todo += [n for h in getattr(node, "handlers", []) for n in h.body]
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in resolve(node, package):
                names = [f"{target}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
                for t in [n for n in names if n in modules] or [target]:
                    while t and t not in modules:
                        t = t.rpartition(".")[0]
                    parts = t.split(".")
                    # the parents of `t` run first, except this module's own (they are already running)
                    deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)
                             if not (module + ".").startswith(".".join(parts[:i]) + ".")}
        graph[module] = deps & modules - {module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    for root, deps in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(deps)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def test_no_import_cycles_among_top_level_imports():
    """With the imports at the top a cycle fails in whichever module a process imports first."""
    cycles = import_cycles(top_level_graph(sorted(PACKAGE.rglob("*.py"))))
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(("files", "cycle"), [
    ({"envs/a.py": "from worldvla.envs.b import x", "envs/b.py": "from worldvla.envs import a"}, True),
    ({"envs/a.py": "from . import b", "envs/b.py": "from .c import y", "envs/c.py": "import worldvla.envs.a"}, True),
    ({"envs/a.py": "try:\n    from worldvla.envs.b import x\nexcept ImportError:\n    x = None",
      "envs/b.py": "from worldvla.envs.a import x"}, True),
    ({"envs/a.py": "from worldvla.envs.b import x", "envs/b.py": "def f():\n    from worldvla.envs import a"}, False),
    ({"envs/__init__.py": "from .a import x", "envs/a.py": "x = 1"}, False),  # a package re-exporting its module
    ({"envs/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from worldvla.envs.b import x",
      "envs/b.py": "from worldvla.envs.a import y"}, False),
])
def test_the_cycle_check_finds_what_it_should(tmp_path, monkeypatch, files, cycle):
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "worldvla")
    for name, text in {"__init__.py": "", "envs/__init__.py": "", **files}.items():
        (tmp_path / "worldvla" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "worldvla" / name).write_text(text + "\n")
    found = import_cycles(top_level_graph(sorted((tmp_path / "worldvla").rglob("*.py"))))
    assert bool(found) is cycle, found


# What the stage CLIs may not import at import time or for --help: optional, slow or simulator packages, loaded
# by the code that uses them.
HEAVY = ("libero", "robosuite", "mujoco", "deepspeed", "wandb", "pyarrow", "av", "lpips")
PROBE = """
import contextlib, importlib, io, json, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    main = getattr(module, "main", None) or importlib.import_module(name + ".__main__").main
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(["--help"])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_stage_clis_import_no_heavy_optional_package():
    """Every `worldvla <command>` module (train, data stages, eval, ...), imported and asked for --help in a fresh
    process, leaves LIBERO, robosuite, MuJoCo, DeepSpeed, wandb, pyarrow and the video codecs unimported."""
    import subprocess
    import sys

    from worldvla.cli import COMMANDS

    modules = sorted({m for m, _ in COMMANDS.values()} | {"worldvla.data.cli", "worldvla.data.export"})
    res = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, timeout=600,
                         cwd=PACKAGE.parent, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = set(json.loads(res.stdout.splitlines()[-1]))
    assert {"worldvla", "torch"} <= loaded  # the probe did import the stages
    assert not loaded & set(HEAVY), f"imported by a stage CLI: {sorted(loaded & set(HEAVY))}"


# Modules that run without the model: LIBERO's worker processes and the simulator-side CLIs (their --help is
# quick). Each imports policy.interface or envs.libero, and neither torch nor the serve extra.
TORCH_FREE = ("worldvla.eval.worker", "worldvla.eval.pool", "worldvla.eval.libero", "worldvla.data.cli",
              "worldvla.data.regenerate", "worldvla.data.record_scripted")


def test_eval_workers_and_simulator_clis_import_neither_torch_nor_the_serve_extra():
    """What the allow-list above keeps: e.g. a LIBERO worker process imports no torch (and so no torch._dynamo
    before its GL context) and no msgpack / websockets, although it imports policy.interface."""
    import subprocess
    import sys

    probe = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"
    for module in TORCH_FREE:  # one process each: one module's imports must not hide another's
        res = subprocess.run([sys.executable, "-c", probe, module], capture_output=True, text=True, timeout=300,
                             cwd=PACKAGE.parent, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        loaded = {m.split(".")[0] for m in json.loads(res.stdout.splitlines()[-1])}
        assert "worldvla" in loaded
        assert not loaded & {"torch", "transformers", "msgpack", "websockets"}, (module, sorted(loaded & {
            "torch", "transformers", "msgpack", "websockets"}))


# -- other packages' imports at the top too ------------------------------------------------------------------
# A function-local import of any other package (stdlib or third party) is one of: a heavy optional package (an
# extra, or slow to import and used by one function), a core dependency that a light module defers (the
# torch-free modules below keep a LIBERO worker and the simulator-side CLIs' --help quick), or on the short
# allow-list with its reason. Everything else stands at the top of its module.
HEAVY_OPTIONAL = frozenset({"libero", "robosuite", "mujoco", "deepspeed", "wandb", "pyarrow", "av", "cv2",
                            "imageio_ffmpeg", "matplotlib", "lpips", "websockets", "msgpack", "peft"})
LIGHT_DEFERRED = frozenset({"torch", "transformers", "safetensors", "accelerate", "tokenizers", "h5py", "imageio"})
# The worldvla modules that the TORCH_FREE modules import (checked below against what they really import).
LIGHT_MODULES = frozenset({
    "worldvla", "worldvla.atomic", "worldvla.config", "worldvla.errors", "worldvla.recipe", "worldvla.stats",
    "worldvla.envs", "worldvla.envs.libero", "worldvla.envs.libero_pro", "worldvla.envs.scripted_expert",
    "worldvla.policy", "worldvla.policy.decode", "worldvla.policy.interface", "worldvla.policy.seeding",
    "worldvla.data", "worldvla.data.cli", "worldvla.data.export", "worldvla.data.raw_demos",
    "worldvla.data.recording", "worldvla.data.record_scripted", "worldvla.data.regenerate",
    "worldvla.data.stage_cli",
    "worldvla.eval", "worldvla.eval.config", "worldvla.eval.libero", "worldvla.eval.merge", "worldvla.eval.pool",
    "worldvla.eval.protocol", "worldvla.eval.results", "worldvla.eval.rng_chain", "worldvla.eval.rollout",
    "worldvla.eval.runner", "worldvla.eval.video", "worldvla.eval.weights_hash", "worldvla.eval.worker",
})
# (importer, imported module exactly as written) -> why it stays local.
ALLOWED_LOCAL_OTHER: dict[tuple[str, str], str] = {
    ("worldvla.bins", "torch"): "the ground floor imports without torch; only the official bin centres need it",
    ("worldvla.model.generate", "torch._dynamo"):
        "torch's compiler stack (~2 s to import): only a torch.compile'd model needs its config",
}


def other_local_imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every function-local import of a module outside the package."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(a.name, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    found.append((node.module, node.lineno))
    return sorted({(m, line) for m, line in found if m != "worldvla" and not m.startswith("worldvla.")},
                  key=lambda t: t[1])


def other_local_offenders(files) -> tuple[list[str], set[tuple[str, str]]]:
    """(offending imports, allow-list entries that were used)."""
    bad, used = [], set()
    for path in files:
        importer = module_name(path)
        for target, line in other_local_imports(path):
            root = target.split(".")[0]
            if root in HEAVY_OPTIONAL or (root in LIGHT_DEFERRED and importer in LIGHT_MODULES):
                continue
            if (importer, target) in ALLOWED_LOCAL_OTHER:
                used.add((importer, target))
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: function-local import of {target} (move it to "
                       "the top, or name it in HEAVY_OPTIONAL / ALLOWED_LOCAL_OTHER with a reason)")
    return bad, used


def test_other_packages_are_imported_at_the_top():
    files = sorted(PACKAGE.rglob("*.py"))
    bad, used = other_local_offenders(files)
    assert not bad, "function-local imports of other packages:\n" + "\n".join(bad)
    stale = sorted(set(ALLOWED_LOCAL_OTHER) - used)
    assert not stale, f"allow-list entries with no such import any more (remove them): {stale}"
    assert LIGHT_MODULES <= {module_name(p) for p in files}, sorted(LIGHT_MODULES - {module_name(p) for p in files})


@pytest.mark.parametrize(("source", "text", "light", "allowed", "found"), [
    ("data/x.py", "def f():\n    import json", set(), {}, True),  # stdlib
    ("data/x.py", "class A:\n    def m(self):\n        import yaml", set(), {}, True),  # core, in a method
    ("data/x.py", "async def f():\n    if True:\n        from PIL import Image", set(), {}, True),  # nested block
    ("data/x.py", "def f():\n    import torch", set(), {}, True),  # torch in a module that is not light
    ("data/x.py", "def f():\n    import torch", {"worldvla.data.x"}, {}, False),  # ... and in a light one
    ("data/x.py", "def f():\n    from PIL import Image", {"worldvla.data.x"}, {}, True),  # light defers torch etc. only
    ("data/x.py", "def f():\n    import pyarrow.parquet as pq", set(), {}, False),  # heavy optional
    ("data/x.py", "def f():\n    try:\n        import cv2\n    except ImportError:\n        cv2 = None", set(), {}, False),
    ("data/x.py", "import json\ndef f():\n    return json", set(), {}, False),  # top level
    ("data/x.py", "def f():\n    from worldvla.vocab import Vocab", set(), {}, False),  # own package: the check above
    ("data/x.py", "def f():\n    import torch._dynamo", set(), {("worldvla.data.x", "torch._dynamo"): "planted"}, False),
    ("data/x.py", "def f():\n    import torch", set(), {("worldvla.data.x", "torch._dynamo"): "planted"}, True),
    ("data/x.py", "def f():\n    import torch._dynamo", set(), {("worldvla.data.y", "torch._dynamo"): "planted"}, True),
])
def test_the_other_local_import_check_finds_what_it_should(tmp_path, monkeypatch, source, text, light, allowed, found):
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "worldvla")
    monkeypatch.setattr(f"{__name__}.LIGHT_MODULES", frozenset(light))
    monkeypatch.setattr(f"{__name__}.ALLOWED_LOCAL_OTHER", allowed)
    path = tmp_path / "worldvla" / source
    path.parent.mkdir(parents=True)
    path.write_text(text + "\n")
    bad, _ = other_local_offenders([path])
    assert bool(bad) is found, bad


def test_light_modules_are_what_the_torch_free_modules_import():
    """LIGHT_MODULES may defer torch & co. only because the torch-free modules import them: the list is exactly
    the worldvla modules those import (one fresh process each), so it grows and shrinks with the real graph."""
    import subprocess
    import sys

    probe = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(sys.modules)))"
    loaded: set[str] = set()
    for module in TORCH_FREE:
        res = subprocess.run([sys.executable, "-c", probe, module], capture_output=True, text=True, timeout=300,
                             cwd=PACKAGE.parent, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        loaded |= {m for m in json.loads(res.stdout.splitlines()[-1]) if m == "worldvla" or m.startswith("worldvla.")}
    assert set(TORCH_FREE) <= loaded
    assert loaded == LIGHT_MODULES, (f"imported but not in LIGHT_MODULES: {sorted(loaded - LIGHT_MODULES)}; "
                                     f"in LIGHT_MODULES but not imported: {sorted(LIGHT_MODULES - loaded)}")


def test_the_package_never_imports_transformers():
    """transformers is a test-only dependency (the parity tests compare against its Chameleon): it sits in
    pyproject's dev extra, so no module of the package may import it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for n in names
                      if n.split(".")[0] == "transformers"]
    assert not found, f"transformers imported by the package (move it back to the core dependencies): {found}"
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    core = pyproject[pyproject.index("dependencies = ["):pyproject.index("[project.optional-dependencies]")]
    assert '"transformers' not in core and '"transformers>=' in pyproject

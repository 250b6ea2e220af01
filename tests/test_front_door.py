"""The front door: every `worldvla <command> --help` and every `python -m <stage> --help` works from a
folder outside the checkout, with the package installed the way a user gets it (a non-editable
wheel: `worldvla/` only, no top-level `libero_util/` or `data/`); the thin scripts in libero_util/
and data/ work from a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worldvla.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per process; several import torch on a shared 2-core machine
STAGE_MODULES = sorted({module for module, _ in COMMANDS.values()} | {"worldvla.data.export"})
SCRIPTS = sorted(str(p.relative_to(ROOT)) for folder in ("libero_util", "data") for p in (ROOT / folder).glob("*.py"))


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(env, cwd): the wheel built from this checkout, unpacked into its own folder that is the only
    entry of PYTHONPATH, and an empty working folder outside the checkout."""
    tmp = tmp_path_factory.mktemp("front_door")
    src = tmp / "src"  # build from a copy, so no build/ or *.egg-info appears in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "worldvla", src / "worldvla", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=TIMEOUT)
    (wheel,) = (tmp / "dist").glob("worldvla-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    probe = subprocess.run(
        [sys.executable, "-c", ("import importlib.util as u, worldvla; print(worldvla.__file__); "
                                "print(u.find_spec('libero_util'), u.find_spec('data'))")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    where, missing = probe.stdout.splitlines()
    assert Path(where).is_relative_to(site), f"the code under test is not the wheel's: {where}"
    assert missing == "None None", "top-level folders of the checkout are importable: not a user's install"
    return env, cwd


def console_script() -> list[str]:
    """The installed `worldvla` script when this interpreter has one, else its entry point
    (`worldvla = worldvla.cli:main`, as the wheel's entry_points.txt declares) called the same way."""
    script = Path(sys.executable).with_name("worldvla")
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from worldvla.cli import main; sys.argv[0] = 'worldvla'; sys.exit(main())"]


def run_all(cmds: list[list[str]], env: dict, cwd: Path) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda c: subprocess.run(c, cwd=cwd, env=env, capture_output=True, text=True,
                                                      timeout=TIMEOUT, check=False), cmds))


def check_help(res: subprocess.CompletedProcess) -> None:
    shown = " ".join(res.args[-3:])
    assert res.returncode == 0, f"{shown}: exit {res.returncode}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, f"{shown}:\n{res.stderr[-3000:]}"
    assert "usage:" in res.stdout and "-h, --help" in res.stdout, f"{shown} printed no help:\n{res.stdout[:2000]}"
    assert len(res.stdout.splitlines()) >= 8, f"{shown} lists no options:\n{res.stdout}"


@pytest.mark.slow  # ~25 processes, most import torch: 1-2 min on a shared 2-core machine
def test_every_command_and_stage_module_prints_its_help_from_a_wheel(wheel_env):
    env, cwd = wheel_env
    script = console_script()
    cmds = [[*script, name, "--help"] for name in COMMANDS]
    cmds += [[sys.executable, "-m", module, "--help"] for module in STAGE_MODULES]
    for res in run_all(cmds, env, cwd):
        check_help(res)


def test_thin_scripts_of_the_checkout_print_their_help(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # they find the checkout themselves
    env["PYTHONPATH"] = ""
    cmds = [[sys.executable, str(ROOT / script), "--help"] for script in SCRIPTS]
    for res in run_all(cmds, env, tmp_path):
        check_help(res)


def test_stage_help_lists_the_config_keys_and_the_grammar(wheel_env):
    """The parse_cli stages show every key with its type and the one grammar, with a working example."""
    env, cwd = wheel_env
    (res,) = run_all([[*console_script(), "train", "--help"]], env, cwd)
    check_help(res)
    assert "train.lr (float)" in res.stdout and "train.max_steps (int)" in res.stdout
    assert "--config CONFIG, --config_path CONFIG" in res.stdout
    (example,) = [line for line in res.stdout.splitlines() if line.strip().startswith("e.g. ")]
    assert "=" in example and " --" in example  # key=value and --key value forms, parsed back in test_config.py


def test_unknown_command_lists_the_commands():
    from worldvla.cli import main, usage

    assert main(["--help"]) == 0
    assert main(["no-such-command"]) == 2
    assert all(name in usage() for name in COMMANDS)


def test_video_metrics_cli_reads_the_one_grammar(tmp_path):
    """`worldvla metrics ROLLOUT_DIR suite=... --out-dir ...`: a bare word, key=value and a dashed flag."""
    import numpy as np

    imageio = pytest.importorskip("imageio.v2")
    from worldvla.eval.video_metrics.__main__ import main

    clip = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    stem = "2025_01_01-task=goal--episode=0--success={}--view=third.mp4"
    for kind in ("gt", "inf"):
        imageio.mimwrite(tmp_path / stem.format(kind), list(clip), fps=10, macro_block_size=1)
    out = tmp_path / "report"
    assert main([str(tmp_path), "suite=cli", "--out-dir", str(out), "metrics=[psnr, ssim]", "kinds=[inf]",
                 "--min-frames", "5", "size=32"]) == 0
    assert "| inf |" in (out / "cli_metrics.md").read_text()
    with pytest.raises(SystemExit) as exit_:  # no folder: one error line, not a traceback
        main(["suite=cli"])
    assert exit_.value.code == 2

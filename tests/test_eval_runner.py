"""The evaluation CLI end to end on the toy env: workers, batching, resume after a kill, errors,
worker crashes, shards + merge, videos. (Real LIBERO runs are in test_eval_libero_sim.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worldvla.eval.libero import main

BASE = ["policy=worldvla.eval.scripted:hash_policy", "env_factory=worldvla.eval.fake_env:FakeEnv",
        "suites=[libero_goal,libero_spatial]", "num_trials=3", "max_steps=20", "videos=none"]
N_EPISODES = 2 * 3 * 3  # suites x fake tasks x trials


def run_cli(out: Path, *extra: str) -> int:
    """The CLI's exit status as a shell sees it (bad input ends it with SystemExit(2))."""
    try:
        return main(BASE + [f"output_dir={out}", *extra])
    except SystemExit as exit_:
        return exit_.code


def episodes(out: Path, name: str = "episodes.jsonl") -> dict:
    recs = [json.loads(x) for x in (out / name).read_text().splitlines()]
    return {(r["suite"], r["task"], r["trial"]): (r["status"], r["steps"], r.get("fingerprint")) for r in recs}


def results_only(summary: dict) -> dict:
    """The summary without timings (those differ between runs)."""
    return {k: v for k, v in summary.items() if k not in ("timing", "wall_seconds_this_invocation", "merged_from",
                                                    "policy_this_invocation")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert run_cli(out, "num_workers=0") == 0
    return out


def test_reference_run_outputs(reference):
    eps = episodes(reference)
    assert len(eps) == N_EPISODES
    statuses = {s for s, _, _ in eps.values()}
    assert statuses == {"success", "failure"}  # the toy task gives a mix: the comparisons below mean something
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["deviations"] and not summary["protocol_exact"]
    run = json.loads((reference / "run.json").read_text())
    assert run["protocol"]["env_seed"] == 0 and run["protocol"]["seed"] == 7
    assert (reference / "summary.md").read_text().startswith("# LIBERO evaluation")


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_count_does_not_change_results(reference, tmp_path, workers):
    assert run_cli(tmp_path, f"num_workers={workers}") == 0
    assert episodes(tmp_path) == episodes(reference)
    a = json.loads((tmp_path / "summary.json").read_text())
    b = json.loads((reference / "summary.json").read_text())
    assert results_only(a) == results_only(b)


def test_kill_then_resume_runs_only_the_missing_episodes(reference, tmp_path):
    cmd = [sys.executable, "-m", "worldvla.eval.libero", *BASE, f"output_dir={tmp_path}", "num_workers=2"]
    env = {**os.environ, "WORLDVLA_FAKE_STEP_S": "0.03"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = tmp_path / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: main and workers
    proc.wait()
    n_before = len(log.read_text().splitlines())
    assert 4 <= n_before < N_EPISODES, "the run finished before it could be killed; make the toy steps slower"
    res = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert f"{n_before} already done, {N_EPISODES - n_before} to run" in res.stderr
    assert len(log.read_text().splitlines()) == N_EPISODES  # nothing ran twice
    assert episodes(tmp_path) == episodes(reference)
    a = json.loads((tmp_path / "summary.json").read_text())
    b = json.loads((reference / "summary.json").read_text())
    assert results_only(a) == results_only(b)


def test_an_exception_errors_one_episode_and_the_run_goes_on(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLDVLA_FAKE_RAISE", "1:2")  # task 1 trial 2 raises inside env.step (both suites)
    assert run_cli(tmp_path, "num_workers=2") == 0
    eps = episodes(tmp_path)
    errored = {k for k, v in eps.items() if v[0] == "error"}
    assert errored == {("libero_goal", 1, 2), ("libero_spatial", 1, 2)} and len(eps) == N_EPISODES
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["suites"]["libero_goal"]["errors"] == 1
    assert "injected failure" in (tmp_path / "eval.log").read_text() and "Traceback" in (tmp_path / "eval.log").read_text()
    monkeypatch.delenv("WORLDVLA_FAKE_RAISE")
    assert run_cli(tmp_path, "num_workers=2") == 0  # resume retries the errored episodes only
    assert episodes(tmp_path) == episodes(reference)
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == N_EPISODES + 2


@pytest.mark.parametrize("crash", ["0:1", "0:1:mid-message"])
def test_a_dying_worker_errors_its_episode_and_is_replaced(tmp_path, crash):
    # A subprocess with a deadline: a worker that dies must never stall the main process or the other
    # workers (one shared queue once did, when a worker died while sending; "mid-message" forces that).
    cmd = [sys.executable, "-m", "worldvla.eval.libero", *BASE, f"output_dir={tmp_path}", "num_workers=2",
           "suites=[libero_goal]"]
    proc = subprocess.Popen(cmd, env={**os.environ, "WORLDVLA_FAKE_CRASH": crash}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("the evaluation stalled after a worker died")
    assert proc.returncode == 0, err
    eps = episodes(tmp_path)
    assert len(eps) == N_EPISODES // 2 and eps[("libero_goal", 0, 1)][0] == "error"
    assert sum(v[0] == "error" for v in eps.values()) == 1


def test_shards_merge_into_the_full_run(reference, tmp_path):
    dirs = [tmp_path / f"s{i}" for i in range(4)]  # 18 episodes in 4 slices: some start mid-task
    merged_eps = {}
    for i, d in enumerate(dirs):
        assert run_cli(d, f"shard={i}/4", f"num_workers={i % 2}") == 0
        eps = episodes(d, f"episodes.shard{i}of4.jsonl")
        assert not set(eps) & set(merged_eps)
        merged_eps.update(eps)
    assert merged_eps == episodes(reference)  # includes the simulator RNG of trials that start a shard
    assert main(["merge", *map(str, dirs), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "summary.json").read_text())
    ref = json.loads((reference / "summary.json").read_text())
    assert results_only(merged)["suites"] == ref["suites"]
    assert run_cli(tmp_path / "c", "shard=1/4", "max_steps=5", "num_workers=0") == 0
    from worldvla.eval.merge import merge_runs

    with pytest.raises(ValueError, match="same evaluation"):
        merge_runs([dirs[0], tmp_path / "c"])


def test_resume_with_different_settings_is_refused(tmp_path, capsys):
    assert run_cli(tmp_path, "num_workers=0", "num_trials=1") == 0
    assert run_cli(tmp_path, "num_workers=0", "num_trials=1", "max_steps=7") == 2
    assert "different settings" in capsys.readouterr().err


def test_videos_of_failures_by_default_and_all_on_request(tmp_path):
    import imageio.v2 as imageio

    assert run_cli(tmp_path / "f", "num_workers=1", "videos=failures", "suites=[libero_goal]") == 0
    eps = [json.loads(x) for x in (tmp_path / "f" / "episodes.jsonl").read_text().splitlines()]
    for r in eps:
        assert (r["video"] is None) == (r["status"] == "success")
    fail = next(r for r in eps if r["status"] == "failure")
    frames = imageio.mimread(tmp_path / "f" / fail["video"])
    assert len(frames) == fail["steps"] + 1 and frames[0].shape == (256, 256, 3)
    assert run_cli(tmp_path / "a", "num_workers=0", "videos=all", "suites=[libero_goal]") == 0
    eps = [json.loads(x) for x in (tmp_path / "a" / "episodes.jsonl").read_text().splitlines()]
    assert all(r["video"] and (tmp_path / "a" / r["video"]).exists() for r in eps)
    assert run_cli(tmp_path / "w", "num_workers=0", "videos=all", "video_wrist=true", "suites=[libero_goal]",
                   "num_trials=1", "tasks=[0]") == 0
    rec = json.loads((tmp_path / "w" / "episodes.jsonl").read_text())
    assert imageio.mimread(tmp_path / "w" / rec["video"])[0].shape == (256, 512, 3)  # agentview | wrist


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0 and "num_workers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:  # a Literal choice: refused by the config loader
        main(["videos=sometimes"])
    assert ex.value.code == 2 and "videos: 'sometimes' not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:  # one error line, the bad-input status
        main(["shard=3/2"])
    assert ex.value.code == 2

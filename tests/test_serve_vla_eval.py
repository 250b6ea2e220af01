"""protocol=vla-eval against the real vla-eval client (allenai's vla-evaluation-harness, the `dev` extra).

In process: vla-eval's own `Connection` (HELLO, EPISODE_START, OBSERVATION -> ACTION, PNG `__image__`
arrays) checks the frame buffer, the open-loop chunk and the one-line errors exactly. In a subprocess:
`vla-eval run --no-docker` runs a short real LIBERO episode against the server, as its CLI does, and
the actions it executed (its own SQLite recording) are the rows of the policy's (K, 7) chunks.
"""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("websockets")
pytest.importorskip("vla_eval")

from vla_eval.connection import Connection

from worldvla.eval.scripted import HashPolicy
from worldvla.serve.server import PolicyServer


class RecordingPolicy(HashPolicy):
    """HashPolicy that keeps every query (frames, states) and every chunk it answered."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.queries, self.chunks = [], []

    def predict_batch(self, instructions, images_per_episode, wrists=None, states=None):
        out = super().predict_batch(instructions, images_per_episode, wrists, states)
        for i, text in enumerate(instructions):
            self.queries.append({"text": text, "frames": [np.array(f) for f in images_per_episode[i]],
                                 "state": None if states is None else np.array(states[i])})
        self.chunks.extend(np.array(c) for c in out)
        return out


def serve(policy, **kw):
    server = PolicyServer(policy, port=0, protocol="vla-eval", **kw)
    return server, server.start_in_thread()


def frame(i, res=64):
    return np.full((res, res, 3), i, dtype=np.uint8)


async def episode(url, n_steps, res=64, state=True, first=0):
    """One episode through vla-eval's Connection; returns (server HELLO payload, actions)."""
    conn = Connection(url, timeout=30)
    await conn.connect(benchmark="test")
    try:
        await conn.start_episode({"task": {"name": "put the bowl on the plate"}})
        actions = []
        for t in range(n_steps):
            obs = {"images": {"agentview": frame(first + t, res)}, "task_description": "put the bowl on the plate"}
            if state:
                obs["states"] = np.full(8, t, dtype=np.float64)
            actions.append(np.asarray((await conn.act(obs))["actions"]))
        await conn.end_episode({"metrics": {"success": False}})
        return conn.server_info, actions
    finally:
        await conn.close()


def test_frame_buffer_and_open_loop_chunks():
    policy = RecordingPolicy(chunk_size=3, history=2, resolution=64, uses_state=True)
    server, url = serve(policy)
    try:
        info, actions = asyncio.run(episode(url, 7))
        _, again = asyncio.run(episode(url, 2, first=100))  # a new episode: the buffer starts empty
    finally:
        server.stop()
    assert info["model_server"] == "worldvla" and info["policy"]["chunk_size"] == 3
    assert info["observation_params"] == {"send_wrist_image": False, "send_state": True, "quat_no_antipodal": True}
    # a new chunk at steps 0, 3, 6; each query holds (previous env step, current), the first only the current
    assert [[int(f[0, 0, 0]) for f in q["frames"]] for q in policy.queries] == [[0], [2, 3], [5, 6], [100]]
    assert [float(q["state"][0]) for q in policy.queries[:3]] == [0.0, 3.0, 6.0]
    # the executed actions are the chunks' rows, in order (open loop)
    np.testing.assert_array_equal(np.stack(actions), np.concatenate(policy.chunks[:3])[:7])
    np.testing.assert_array_equal(np.stack(again), policy.chunks[3][:2])


def test_greeting_asks_vla_eval_libero_for_the_unflipped_axis_angle():
    """Issue 23 item 3: vla-eval's orchestrator passes the HELLO's observation_params to its LIBERO benchmark;
    `quat_no_antipodal` makes its state axis-angle robosuite's (w < 0 kept), as worldvla trains on."""
    from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark
    from vla_eval.orchestrator import _merge_observation_params

    from worldvla.envs.libero import quat2axisangle

    server, url = serve(RecordingPolicy(chunk_size=2, history=2, resolution=64, uses_state=True))
    try:
        info, _ = asyncio.run(episode(url, 1))
    finally:
        server.stop()
    params = _merge_observation_params(LIBEROBenchmark, {"suite": "libero_goal"}, info["observation_params"])
    bench = LIBEROBenchmark(**params)
    quat = np.array([-0.7, 0.2, -0.68, 0.1]) * -1  # [x, y, z, w] with w < 0
    quat /= np.linalg.norm(quat)
    got = bench._quat_to_aa(quat)  # what its observation's `states` carry
    np.testing.assert_allclose(got, quat2axisangle(quat), rtol=1e-6)
    assert np.linalg.norm(got) > np.pi  # a w >= 0 flip would give an angle below pi


def test_errors_are_one_short_line_and_the_session_survives():
    policy = RecordingPolicy(chunk_size=2, history=2, resolution=64)
    server, url = serve(policy)

    async def run():
        conn = Connection(url, timeout=30)
        await conn.connect()
        try:
            with pytest.raises(RuntimeError) as wrong_size:
                await conn.act({"images": {"agentview": frame(1, 224)}, "task_description": "x"})
            with pytest.raises(RuntimeError) as no_images:
                await conn.act({"task_description": "x"})
            ok = await conn.act({"images": {"agentview": frame(1)}, "task_description": "x"})
            return str(wrong_size.value), str(no_images.value), ok
        finally:
            await conn.close()

    try:
        wrong_size, no_images, ok = asyncio.run(run())
    finally:
        server.stop()
    assert "224x224 px but the policy takes 64x64" in wrong_size and "resize=true" in wrong_size
    assert "images" in no_images
    for msg in (wrong_size, no_images):
        assert "\n" not in msg and len(msg) < 320 and "array(" not in msg
    assert np.asarray(ok["actions"]).shape == (7,)


def test_resize_on_request():
    policy = RecordingPolicy(chunk_size=2, history=2, resolution=64)
    server, url = serve(policy, resize=True)
    try:
        _, actions = asyncio.run(episode(url, 1, res=96, state=False))
    finally:
        server.stop()
    assert policy.queries[0]["frames"][0].shape == (64, 64, 3) and actions[0].shape == (7,)


LIBERO = ("vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark", {"suite": "libero_goal"}, "libero_goal")
LIBERO_PRO = ("vla_eval.benchmarks.libero_pro.benchmark:LIBEROProBenchmark",
              {"suite": "libero_goal", "perturbation": "swap"}, "libero_goal_swap")


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("bench", [LIBERO, LIBERO_PRO], ids=["libero", "libero_pro_swap"])
def test_vla_eval_libero_episode_through_its_cli(tmp_path, bench):
    """`vla-eval run` (its CLI, no docker) runs a real LIBERO (LIBERO-PRO) episode against `worldvla serve`."""
    pytest.importorskip("libero.libero")
    from libero.libero import benchmark as libero_benchmark

    from worldvla.envs.libero import pick_gl_backend

    bench_cls, params, suite = bench
    instruction = libero_benchmark.get_benchmark_dict()[suite]().get_task(0).language

    steps, k = 12, 5
    policy = RecordingPolicy(chunk_size=k, history=2, resolution=256, uses_state=True)
    server, url = serve(policy)
    cfg = tmp_path / "libero_smoke.yaml"
    cfg.write_text(json.dumps({
        "server": {"url": url, "timeout": 120},
        "output_dir": str(tmp_path / "results"),
        "benchmarks": [{"benchmark": bench_cls, "params": {**params, "seed": 7}, "max_tasks": 1,
                        "episodes_per_task": 1, "max_steps": steps}]}))
    env = {**os.environ, "MUJOCO_GL": pick_gl_backend()}
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    cli = Path(sys.executable).with_name("vla-eval")
    try:
        run = subprocess.run([str(cli), "run", "-c", str(cfg), "--no-docker", "-y"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, check=False)
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (db,) = (tmp_path / "results").glob("recording-*.sqlite")
    with sqlite3.connect(db) as con:
        rows = [json.loads(f) for (f,) in con.execute("SELECT fields FROM step_rows ORDER BY step_id")]
        (status, n_steps), = con.execute("SELECT status, steps FROM episode_results").fetchall()
    executed = np.array([r["action"] for r in rows if "action" in r], dtype=np.float64)
    assert n_steps == steps and len(executed) == steps and status in ("fail", "success")
    # ceil(12 / 5) = 3 chunks of (K, 7); LIBERO's task instruction; 256 px frames, 2-frame history after the first
    assert len(policy.chunks) == 3 and all(c.shape == (k, 7) for c in policy.chunks)
    assert {q["text"] for q in policy.queries} == {instruction}
    assert [len(q["frames"]) for q in policy.queries] == [1, 2, 2]
    assert all(f.shape == (256, 256, 3) for q in policy.queries for f in q["frames"])
    assert not np.array_equal(*policy.queries[1]["frames"])  # two different env steps
    want = np.concatenate(policy.chunks)[:steps].copy()
    want[:, 6] = np.where(want[:, 6] < 0, -1.0, 1.0)  # vla-eval's LIBERO binarises the gripper
    np.testing.assert_allclose(executed, want, rtol=0, atol=1e-6)  # its recording stores float32
    # the state each re-plan query carried is the robot state after the previous env step
    states = np.array([r["state"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(policy.queries[1]["state"], states[k - 1], atol=1e-6)
    np.testing.assert_allclose(policy.queries[2]["state"], states[2 * k - 1], atol=1e-6)


def test_tiny_worldvla_checkpoint_behind_vla_eval(tmp_path):
    """The real policy: each action is a row of the chunk the in-process policy predicts from the same history."""
    policy_mod = pytest.importorskip("worldvla.policy.policy")
    from worldvla.testing.fixtures import make_tiny_assets
    from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", make_tiny_assets(tmp_path / "assets"), chunk_size=3,
                                 resolution=256)
    with one_torch_thread():
        policy = policy_mod.WorldVLAPolicy.from_pretrained(ckpt, device="cpu")
        server, url = serve(policy)
        rng = np.random.default_rng(0)
        sent = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(4)]

        async def run():
            conn = Connection(url, timeout=120)
            await conn.connect()
            try:
                await conn.start_episode({"task": {}})
                return [np.asarray((await conn.act({"images": {"agentview": f}, "task_description": "open the drawer"}))
                                   ["actions"]) for f in sent]
            finally:
                await conn.close()

        try:
            got = asyncio.run(run())
        finally:
            server.stop()
        first = policy.predict("open the drawer", [sent[0]])
        second = policy.predict("open the drawer", [sent[2], sent[3]])
    assert first.shape == (3, 7)
    np.testing.assert_array_equal(np.stack(got), np.concatenate([first, second[:1]]))

"""The worker pool answers up to `max_batch` waiting workers with one policy call."""

import json

import numpy as np

from worldvla.eval.config import EvalConfig
from worldvla.eval.pool import WorkerPool
from worldvla.eval.runner import Evaluation
from worldvla.eval.scripted import HashPolicy


class Inbox(list):
    put = list.append


def pool_with_pending(max_batch: int, arrivals: list[int]) -> tuple[WorkerPool, list]:
    calls = []

    def predict(queries):
        calls.append(list(queries))
        return [np.full((5, 7), q) for q in queries]

    pool = WorkerPool(EvalConfig(policy="x", max_batch=max_batch), {}, ".", predict, lambda rec: None, 8)
    pool.inboxes = [Inbox() for _ in range(8)]
    for wid in arrivals:
        pool.pending[wid] = wid  # the query payload: its worker id, echoed back in the chunk
    return pool, calls


def test_up_to_max_batch_per_call_oldest_first():
    pool, calls = pool_with_pending(2, [5, 1, 7, 0, 3])
    pool._answer()
    assert calls == [[5, 1], [7, 0], [3]]
    assert not pool.pending
    for wid in (5, 1, 7, 0, 3):
        (kind, chunk), = pool.inboxes[wid]
        assert kind == "chunk" and (chunk == wid).all()  # each worker gets its own answer


def test_no_limit_answers_everyone_in_one_call():
    pool, calls = pool_with_pending(0, [4, 2, 6])
    pool._answer()
    assert calls == [[4, 2, 6]]


def test_max_batch_does_not_change_results(tmp_path):
    base = {"policy": "hash", "env_factory": "worldvla.eval.fake_env:FakeEnv", "suites": ["libero_goal"],
            "num_trials": 2, "max_steps": 12, "videos": "none", "batch_timeout_s": 0.5}
    ref = Evaluation(EvalConfig(**base, num_workers=0, output_dir=tmp_path / "ref"), policy=HashPolicy(),
                     progress=False).execute()
    policy = HashPolicy(delay_s=0.02)  # workers pile up while a call runs
    got = Evaluation(EvalConfig(**base, num_workers=3, max_batch=2, output_dir=tmp_path / "pool"), policy=policy,
                     progress=False).execute()
    assert max(policy.batch_sizes) == 2  # several workers waited at once, and never more than 2 per call
    records = {n: sorted(json.loads(x)["fingerprint"] for x in (tmp_path / n / "episodes.jsonl").read_text().splitlines())
               for n in ("ref", "pool")}
    assert records["pool"] == records["ref"] and got["suites"] == ref["suites"]
    assert EvalConfig(policy="x", max_batch=0).max_batch == 0


def test_a_failing_query_errors_its_own_episode_only():
    calls = []

    def predict(queries):  # a policy that raises whenever the batch holds query 7
        calls.append(list(queries))
        if 7 in queries:
            raise RuntimeError("cannot decode query 7")
        return [np.full((5, 7), q) for q in queries]

    pool = WorkerPool(EvalConfig(policy="x"), {}, ".", predict, lambda rec: None, 8)
    pool.inboxes = [Inbox() for _ in range(8)]
    for wid in (3, 7, 5):
        pool.pending[wid] = wid
    pool._answer()
    assert calls == [[3, 7, 5], [3], [7], [5]]  # the batch, then each query alone
    assert pool.inboxes[7] == [("error", "policy error: RuntimeError: cannot decode query 7")]
    for wid in (3, 5):
        (kind, chunk), = pool.inboxes[wid]
        assert kind == "chunk" and (chunk == wid).all()

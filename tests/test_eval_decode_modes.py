"""The eval loop with official decoding: chunks of another length than K, a parsing failure that ends
the episode as a failure (with its reason, not as an error of the run), the grammar-violation count,
the decode mode in run.json / summary.md, and a resume refusing another decode mode."""

import json

import numpy as np
import pytest

from worldvla.config import parse_cli
from worldvla.eval.config import EvalConfig
from worldvla.eval.runner import Evaluation, ResumeMismatch

REASON = "action block 1 has 3 ids (test)"


class OfficialLikePolicy:
    """First query of an episode: 3 actions (K = 5) and a grammar violation; later queries: 2 actions,
    then the official parse fails."""

    chunk_size, history, resolution, name = 5, 2, 32, "official_like"

    def __init__(self, decode_mode="official"):
        self.decode_mode = decode_mode
        self.last_decode_info = []

    def predict_batch(self, instructions, images_per_episode, wrists=None, states=None):
        chunks, self.last_decode_info = [], []
        for text, imgs in zip(instructions, images_per_episode):
            if text == "nothing parsed":
                chunks.append(np.zeros((0, 7)))
                self.last_decode_info.append({"failure": REASON, "grammar_violation": None})
                continue
            first = len(imgs) == 1
            chunks.append(np.full((3 if first else 2, 7), 0.01))
            self.last_decode_info.append({"failure": None if first else REASON, "grammar_violation": first})
        return chunks


def config(out, workers=0):
    return parse_cli(EvalConfig, ["env_factory=worldvla.eval.fake_env:FakeEnv", "suites=[libero_goal]",
                                  "num_trials=2", "tasks=[0,1]", "max_steps=40", "videos=none",
                                  f"num_workers={workers}", f"output_dir={out}"])


@pytest.mark.parametrize("workers", [0, 1])
def test_parse_failure_is_an_episode_failure_with_its_reason(tmp_path, workers):
    summary = Evaluation(config(tmp_path, workers), policy=OfficialLikePolicy(), progress=False).execute()
    recs = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    for r in recs:
        assert r["status"] in ("failure", "success") and r["error"] is None  # never an error of the run
        if r["status"] == "failure":
            assert r["failure_reason"] == REASON
            assert r["steps"] == 3 + 2 and r["queries"] == 2  # both chunks ran, then the failure
            assert r["grammar_violations"] == 1
    assert any(r["status"] == "failure" for r in recs)
    block = summary["suites"]["libero_goal"]
    assert block["decode_failures"] == sum(r["status"] == "failure" for r in recs)
    assert block["grammar_violation_chunks"] == sum(r["grammar_violations"] for r in recs)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["policy"]["decode_mode"] == "official" and run["protocol"]["decode_mode"] == "official"
    md = (tmp_path / "summary.md").read_text()
    assert "Decoding: `official`" in md and "failed by the official parsing rule" in md
    assert "grammar violations of the free argmax" in md


def test_resume_refuses_another_decode_mode(tmp_path):
    Evaluation(config(tmp_path), policy=OfficialLikePolicy(), progress=False).execute()
    with pytest.raises(ResumeMismatch, match="policy"):
        Evaluation(config(tmp_path), policy=OfficialLikePolicy("parallel"), progress=False).execute()
    Evaluation(config(tmp_path), policy=OfficialLikePolicy(), progress=False).execute()  # same mode resumes


def test_a_fixed_policy_refuses_another_decode_mode():
    from worldvla.policy.interface import load_policy

    with pytest.raises(ValueError, match="decode.mode=official"):
        load_policy("worldvla.eval.scripted:hash_policy", decode="official")
    assert load_policy("worldvla.eval.scripted:hash_policy", decode="auto") is not None


def test_served_official_policy_keeps_failures_and_grammar_flags(tmp_path):
    pytest.importorskip("websockets")
    from worldvla.policy.client import RemotePolicy
    from worldvla.serve.server import PolicyServer

    server = PolicyServer(OfficialLikePolicy(), port=0)
    url = server.start_in_thread()
    try:
        remote = RemotePolicy(url)
        assert remote.decode_mode == "official"
        frame = np.zeros((32, 32, 3), np.uint8)
        chunks = remote.predict_batch(["a", "b", "nothing parsed"], [[frame], [frame, frame], [frame]])
        assert [c.shape for c in chunks] == [(3, 7), (2, 7), (0, 7)]
        assert remote.last_decode_info == [{"failure": None, "grammar_violation": True},
                                           {"failure": REASON, "grammar_violation": False},
                                           {"failure": REASON, "grammar_violation": None}]
        # the whole eval through the server gives the same episodes as in-process
        Evaluation(config(tmp_path / "remote"), policy=remote, progress=False).execute()
        Evaluation(config(tmp_path / "local"), policy=OfficialLikePolicy(), progress=False).execute()
        strip = lambda p: [{k: v for k, v in json.loads(x).items() if "seconds" not in k}
                           for x in (p / "episodes.jsonl").read_text().splitlines()]
        assert strip(tmp_path / "remote") == strip(tmp_path / "local")
        remote.close()
    finally:
        server.stop()


def test_rollout_failure_only_when_reached():
    from worldvla.eval.fake_env import FakeEnv
    from worldvla.eval.protocol import EpisodeKey
    from worldvla.eval.rollout import RolloutOptions, run_episode
    from worldvla.policy.interface import ActionChunk

    key = EpisodeKey("libero_goal", 0, 0)
    env = FakeEnv("libero_goal", 0, resolution=32)
    none = run_episode(env, key, RolloutOptions(max_steps=40), lambda q: ActionChunk(np.zeros((0, 7)), "empty"))
    assert (none["status"], none["steps"], none["failure_reason"]) == ("failure", 0, "empty")
    two = lambda q: ActionChunk(np.full((2, 7), 0.01), "late")
    cut = run_episode(env, key, RolloutOptions(max_steps=40, execute_steps=1), two)  # never reaches the failure
    assert cut["failure_reason"] is None and cut["steps"] == 40
    budget = run_episode(env, key, RolloutOptions(max_steps=2), two)  # the step budget ends first
    assert budget["failure_reason"] is None and budget["steps"] == 2
    with pytest.raises(ValueError, match="shape"):
        from worldvla.policy.interface import as_chunk

        as_chunk(np.zeros((0, 7)))  # no actions without a failure is still a broken policy

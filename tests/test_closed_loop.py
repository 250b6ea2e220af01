"""A broken closed loop is caught: a tiny model learns the grid-world toy (worldvla.testing.toy_env) through
the real stages (export layout -> conversations -> pretokenize -> train), then the real eval runner solves it;
each classic eval bug, planted into the real code path by monkeypatching, makes it fail:
image not rotated, gripper sign inverted, chunk executed in reverse, history frames swapped, and the
actions de-normalised with another set's statistics (docs/libero_protocol.md, "closed-loop test")."""

import dataclasses
import json

import numpy as np
import pytest

from worldvla.data import processor as processor_module
from worldvla.envs.libero import Observation, proprio_state
from worldvla.eval import rollout
from worldvla.eval.libero import main
from worldvla.stats import WORLDVLA_ACTION_STATS
from worldvla.testing import toy_env
from worldvla.train.toy_policy import TOY_STATS, train_toy_policy

pytestmark = pytest.mark.slow  # one training run (300 tiny steps) shared by every case

TRIALS = toy_env.num_init_states()  # every board at least two moves from the block


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_assets, single_torch_thread):
    return train_toy_policy(tmp_path_factory.mktemp("toy"), tiny_assets.root / "tokenizer", seed=0)


def success_rate(ckpt, out) -> float:
    """The real runner in-process on the toy env; every episode must end (success or failure, no error)."""
    assert main([f"policy={ckpt}", "env_factory=worldvla.testing.toy_env:ToyGraspEnv", "suites=[libero_goal]",
                 f"num_trials={TRIALS}", "max_steps=12", "num_workers=0", "videos=none", f"output_dir={out}"]) == 0
    recs = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(recs) == TRIALS and all(r["status"] != "error" for r in recs), recs
    return float(np.mean([r["status"] == "success" for r in recs]))


# -- the planted bugs: each replaces one real function on the rollout's / policy's path -------------
def _no_rotation(monkeypatch):
    monkeypatch.setattr(rollout, "format_obs", lambda obs: Observation(
        obs["agentview_image"], obs["robot0_eye_in_hand_image"], proprio_state(obs)))


def _edit_chunks(monkeypatch, edit):
    real = rollout.as_chunk

    def as_chunk(reply, expected_dim=7):
        chunk = real(reply, expected_dim)
        return dataclasses.replace(chunk, actions=edit(np.array(chunk.actions)))

    monkeypatch.setattr(rollout, "as_chunk", as_chunk)


def _inverted_gripper(monkeypatch):
    def flip(actions):
        actions[:, 6] *= -1
        return actions

    _edit_chunks(monkeypatch, flip)


def _reversed_chunk(monkeypatch):
    _edit_chunks(monkeypatch, lambda actions: actions[::-1].copy())


def _swapped_history(monkeypatch):
    real = rollout.Query
    monkeypatch.setattr(rollout, "Query", lambda instruction, images, *rest: real(instruction, images[::-1], *rest))


def _other_statistics(monkeypatch):
    real = processor_module.stats_of  # resolves the recipe's statistics when the policy's processor is built
    monkeypatch.setattr(processor_module, "stats_of",
                        lambda spec: WORLDVLA_ACTION_STATS if real(spec) == TOY_STATS else real(spec))


BUGS = {"image not rotated": _no_rotation, "gripper sign inverted": _inverted_gripper,
        "chunk executed in reverse": _reversed_chunk, "history frames swapped": _swapped_history,
        "action statistics of another set": _other_statistics}


def test_the_correct_loop_solves_the_toy(checkpoint, tmp_path):
    rate = success_rate(checkpoint, tmp_path)
    print(f"correct loop: success {rate:.0%}")
    assert rate >= 0.8


@pytest.mark.parametrize("bug", list(BUGS))
def test_a_planted_bug_breaks_the_loop(checkpoint, tmp_path, monkeypatch, bug):
    BUGS[bug](monkeypatch)
    rate = success_rate(checkpoint, tmp_path)
    print(f"{bug}: success {rate:.0%}")
    assert rate <= 0.25

"""README step 2 ("Data") runs as written: its `worldvla` commands are executed in order, in a scratch folder
that holds a tiny raw LIBERO demo file and the fixture tokenizer at the paths the README names
(data/raw/libero_goal, ckpts/chameleon/tokenizer), and the training set they end in is read back.

Two things differ from a user's machine, both outside the commands: the simulator is a small fake (a replay
needs only observations and `done`; tests/test_data_regenerate.py checks the replay itself), and regenerate
gets `workers=1` appended (a later override wins), because the fake lives in this process while the
README's workers=8 would spawn processes that build the real simulator.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from worldvla.cli import main as worldvla
from worldvla.data import regenerate as R
from worldvla.data.raw_demos import RawDemo, write_raw_demo_file
from worldvla.envs.libero import get_suite
from worldvla.testing.fixtures import make_tiny_assets

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8  # actions per demo; the fake task is done after the last one
QUAT = np.array([1.0, 0.0, 0.0, 0.0])


def step2_commands(readme: str) -> list[list[str]]:
    """The shell commands of the bash block under `### 2. Data`, continuation lines joined."""
    section = readme[readme.index("### 2. Data"):readme.index("### 3.")]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class FakeSimulator:
    """Observations that change every step (so frames differ), done after STEPS actions."""

    def __init__(self, resolution: int):
        self.res, self.t = resolution, 0

    def _obs(self):
        img = np.full((self.res, self.res, 3), 20 * self.t, np.uint8)
        img[: self.res // 2, :, 1] = 255 - 20 * self.t
        return {"agentview_image": img, "robot0_eye_in_hand_image": img[::-1].copy(),
                "robot0_eef_pos": np.array([0.1 * self.t, 0.0, 1.0]), "robot0_eef_quat": QUAT.copy(),
                "robot0_gripper_qpos": np.array([0.02, -0.02]), "robot0_joint_pos": np.zeros(7)}

    def settle(self, init_state, wait_steps, seed=None):
        self.t = 0
        return self._obs()

    def step(self, action):
        self.t += 1
        done = self.t >= STEPS
        return self._obs(), float(done), done, {}

    def sim_state(self):
        return np.array([float(self.t), 0.0, 0.0, 0.0])

    def model_xml(self):
        return "<fake/>"


def fake_simulator(suite, task_id, resolution, env_seed):
    return FakeSimulator(resolution)


def write_tiny_raw_demos(raw_dir: Path) -> None:
    """Two demos of libero_goal task 0, every action a move (none is a no-op)."""
    name = get_suite("libero_goal").get_task(0).name
    rng = np.random.default_rng(0)
    demos = []
    for _ in range(2):
        actions = np.concatenate([rng.uniform(-0.5, 0.5, (STEPS, 6)), np.ones((STEPS, 1))], axis=1)
        demos.append(RawDemo(actions, np.zeros((STEPS, 4)), "<raw/>"))
    write_raw_demo_file(raw_dir / f"{name}_demo.hdf5", {"language_instruction": name.replace("_", " ")}, demos)


def test_readme_step_2_is_worldvla_commands_without_placeholders():
    commands = step2_commands((ROOT / "README.md").read_text())
    assert [c[:2] for c in commands] == [["worldvla", "regenerate"], ["worldvla", "conversations"],
                                         ["worldvla", "pretokenize"], ["worldvla", "pretokenize"],
                                         ["worldvla", "concat"]]
    assert not [t for c in commands for t in c if "..." in t or "<" in t]


@pytest.mark.usefixtures("single_torch_thread")
def test_readme_step_2_runs_on_a_tiny_set(tmp_path, monkeypatch):
    from worldvla.data.datasets import PretokenizedDataset

    write_tiny_raw_demos(tmp_path / "data" / "raw" / "libero_goal")
    make_tiny_assets(tmp_path / "ckpts" / "chameleon")  # -> ckpts/chameleon/tokenizer/
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(R, "_ENV_FACTORY", fake_simulator)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # worldvla.cli sets it per command
    for command in step2_commands((ROOT / "README.md").read_text()):
        extra = ["workers=1"] if command[1] == "regenerate" else []
        assert worldvla(command[1:] + extra) == 0, command
    out = Path(command[-1].split("=", 1)[1])  # the concat's output
    ds = PretokenizedDataset(str(out))
    kinds = {ds.kind(i) for i in range(len(ds))}
    # 2 trajectories of 8 frames: 2 x (8 - 5 + 1) action and 2 x 7 world samples
    assert len(ds) == 2 * (STEPS - 5 + 1) + 2 * (STEPS - 1) and kinds == {"action", "world"}

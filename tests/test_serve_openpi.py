"""protocol=openpi against openpi-client 0.1.2's own bytes and its real `WebsocketClientPolicy`.

openpi-client pins numpy < 2, so it cannot live in this venv: the bytes it writes are shipped in
tests/fixtures/openpi_client/ (README says how they were made), and a slow test builds a venv with
the client from the registry, checks the fixtures are still what it writes, and drives the server with it.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("websockets")

from worldvla.eval.scripted import HashPolicy
from worldvla.serve.protocols import openpi
from worldvla.serve.server import PolicyServer

FIXTURES = Path(__file__).parent / "fixtures" / "openpi_client"


def recorded_values():
    """What fixtures/openpi_client/record.py packs (recomputed here, not imported from it)."""
    image = (np.arange(224 * 224 * 3, dtype=np.int64) % 251).astype(np.uint8).reshape(224, 224, 3)
    obs = {"observation/image": image, "observation/wrist_image": image[::-1].copy(),
           "observation/state": np.linspace(-1.0, 1.0, 8), "prompt": "put the bowl on the plate"}
    return obs, np.arange(35, dtype=np.float64).reshape(5, 7) / 10


def test_decodes_the_real_clients_observation_bytes():
    want, _ = recorded_values()
    got = openpi.unpack((FIXTURES / "observation.msgpack").read_bytes())
    assert set(got) == set(want) and got["prompt"] == want["prompt"]
    for key in ("observation/image", "observation/wrist_image", "observation/state"):
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
        np.testing.assert_array_equal(got[key], want[key])


def test_encodes_actions_byte_for_byte_as_openpi():
    _, actions = recorded_values()
    assert openpi.pack({"actions": actions}) == (FIXTURES / "actions.msgpack").read_bytes()


class RecordingPolicy(HashPolicy):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.queries, self.chunks = [], []

    def predict_batch(self, instructions, images_per_episode, wrists=None, states=None):
        out = super().predict_batch(instructions, images_per_episode, wrists, states)
        for i in range(len(instructions)):
            self.queries.append({"frames": list(images_per_episode[i]), "wrists": None if wrists is None else
                                 list(wrists[i]), "state": None if states is None else np.array(states[i])})
        self.chunks.extend(np.array(c) for c in out)
        return out


@pytest.fixture(scope="module")
def openpi_python(tmp_path_factory):
    """Python of a fresh venv with openpi-client 0.1.2 from the registry (~20 s with pip's cache)."""
    venv = tmp_path_factory.mktemp("openpi_client_venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # typing_extensions: openpi-client imports it without declaring it as a dependency
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "openpi-client==0.1.2", "typing_extensions"],
                         capture_output=True, text=True, timeout=600, check=False)
    if pip.returncode != 0:
        pytest.skip(f"cannot install openpi-client==0.1.2 from the registry: {pip.stderr.strip()[-300:]}")
    return py


CLIENT = r'''
import json, sys
import numpy as np
from openpi_client import websocket_client_policy

url, out = sys.argv[1], sys.argv[2]
client = websocket_client_policy.WebsocketClientPolicy(url)   # as openpi's LIBERO example, with a ws:// host
rng = np.random.default_rng(0)
sent, result = {}, {"metadata": client.get_server_metadata(), "actions": []}
for i in range(3):
    obs = {"observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           "observation/state": rng.standard_normal(8), "prompt": "put the bowl on the plate"}
    for k, v in obs.items():
        sent[f"{i}/{k}"] = v
    chunk = client.infer(obs)["actions"]                         # the example's `client.infer(element)["actions"]`
    result["actions"].append({"dtype": str(chunk.dtype), "values": chunk.tolist()})
try:
    client.infer({"prompt": "no image"})
except RuntimeError as err:
    result["error"] = str(err)
result["after_error"] = list(client.infer({k.split("/", 1)[1]: v for k, v in sent.items() if k.startswith("0/")})["actions"].shape)
np.savez(out + ".npz", **sent)
print(json.dumps(result, default=str))
'''


@pytest.mark.slow
def test_fixtures_are_what_the_real_client_writes(openpi_python, tmp_path):
    subprocess.run([str(openpi_python), str(FIXTURES / "record.py"), str(tmp_path)], check=True, timeout=120)
    for name in ("observation.msgpack", "actions.msgpack"):
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name


@pytest.mark.slow
def test_real_websocket_client_policy(openpi_python, tmp_path, caplog):
    policy = RecordingPolicy(chunk_size=5, history=2, resolution=256, uses_wrist=True, uses_state=True)
    server = PolicyServer(policy, port=0, protocol="openpi", resize=True)
    url = server.start_in_thread()
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    try:
        with caplog.at_level(logging.WARNING, logger="worldvla.serve.protocols.openpi"):
            run = subprocess.run([str(openpi_python), str(script), url, str(tmp_path / "sent")],
                                 capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    meta = result["metadata"]
    assert meta["protocol"] == "openpi" and meta["action_shape"] == [5, 7]
    assert meta["policy"]["resolution"] == 256 and len(meta["deviations"]) == 1
    assert [r.getMessage() for r in caplog.records].count(f"openpi session 1: {meta['deviations'][0]}") == 1
    sent = np.load(tmp_path / "sent.npz")
    for i, got in enumerate(result["actions"]):  # the chunks the policy computed, exactly
        assert got["dtype"] == "float64"
        np.testing.assert_array_equal(np.array(got["values"]), policy.chunks[i])
        q = policy.queries[i]  # one frame (the deviation), resized 224 -> 256 bicubic
        image = np.asarray(Image.fromarray(sent[f"{i}/observation/image"]).resize((256, 256), Image.BICUBIC))
        wrist = np.asarray(Image.fromarray(sent[f"{i}/observation/wrist_image"]).resize((256, 256), Image.BICUBIC))
        assert len(q["frames"]) == 1
        np.testing.assert_array_equal(q["frames"][0], image)
        np.testing.assert_array_equal(q["wrists"][0], wrist)
        np.testing.assert_array_equal(q["state"], sent[f"{i}/observation/state"].astype(np.float32))
    err = result["error"]
    assert err.startswith("Error in inference server:\n") and "observation/image" in err
    assert "\n" not in err.split("\n", 1)[1] and len(err) < 400
    assert result["after_error"] == [5, 7]  # the connection stays usable

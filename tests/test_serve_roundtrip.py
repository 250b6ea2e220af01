"""Policy server and client: round trip equals in-process predictions, malformed input gets an error
reply and never stops the server, concurrent clients are batched, evaluation through the server."""

import json
import threading

import msgpack
import numpy as np
import pytest

pytest.importorskip("websockets")

from worldvla.eval.scripted import HashPolicy
from worldvla.policy import wire
from worldvla.policy.client import RemotePolicy, RemotePolicyError
from worldvla.serve.server import PolicyServer


class FailingOn(HashPolicy):
    """Raises when an instruction says so (a policy bug must become an error reply)."""

    def predict_batch(self, instructions, *a, **k):
        if any("explode" in t for t in instructions):
            raise RuntimeError("policy exploded")
        return super().predict_batch(instructions, *a, **k)


@pytest.fixture(scope="module")
def served():
    policy = FailingOn(chunk_size=4, history=2, resolution=64, uses_state=True)
    server = PolicyServer(policy, port=0)
    url = server.start_in_thread()
    yield server, policy, url
    server.stop()


def frames(rng, n=2, res=64):
    return [rng.integers(0, 256, (res, res, 3), dtype=np.uint8) for _ in range(n)]


def raw_connection(url):
    from websockets.sync.client import connect

    from worldvla.policy.client import _open

    ws = _open(connect, url)
    hello = wire.unpack(ws.recv(timeout=10))
    assert hello["type"] == "hello"
    return ws


def test_round_trip_equals_in_process(served, rng):
    _, policy, url = served
    with RemotePolicy(url) as remote:
        assert (remote.chunk_size, remote.history, remote.resolution, remote.uses_state) == (4, 2, 64, True)
        texts = ["put the bowl on the plate", "open the drawer", "turn on the stove"]
        images = [frames(rng, 1), frames(rng, 2), frames(rng, 2)]
        states = [rng.standard_normal(8).astype(np.float32) for _ in texts]
        got = remote.predict_batch(texts, images, states=states)
        want = policy.predict_batch(texts, images, states=states)
        assert len(got) == 3
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == (4, 7)
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(remote.predict(texts[0], images[0], state=states[0]), want[0])


@pytest.mark.parametrize("payload", [
    b"\xc1\xc1\xc1 definitely not msgpack",
    b"",
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"type": "reboot"}),
    msgpack.packb({"type": "predict_batch", "instructions": "not a list", "images": []}),
    msgpack.packb({"type": "predict_batch", "instructions": ["x"], "images": [[{"__ndarray__": True, "dtype": "|O",
                                                                                 "shape": [1], "data": b"x"}]]}),
    msgpack.packb({"type": "predict_batch", "instructions": ["x"], "images": [[{"__ndarray__": True, "dtype": "|u1",
                                                                                 "shape": [10, 10, 3], "data": b"xy"}]]}),
    msgpack.packb({"type": "predict_batch", "instructions": ["x", "y"], "images": [[]]}),
    msgpack.packb({"type": "predict_batch", "id": 9, "instructions": ["explode"],
                   "images": [[wire._default(np.zeros((8, 8, 3), np.uint8))]]}, use_bin_type=True),
    "a text frame",
])
def test_garbage_gets_an_error_reply_and_the_server_survives(served, payload, rng):
    _, _, url = served
    ws = raw_connection(url)
    ws.send(payload)
    reply = wire.unpack(ws.recv(timeout=10))
    assert reply["type"] == "error" and reply["message"]
    ws.send(wire.pack({"type": "ping", "id": 5}))  # the same connection still works
    assert wire.unpack(ws.recv(timeout=10)) == {"type": "pong", "id": 5}
    ws.close()
    with RemotePolicy(url) as remote:  # and so do new ones
        assert remote.predict_batch(["ok"], [frames(rng, 1)])[0].shape == (4, 7)


def test_random_bytes_fuzz(served, rng):
    _, _, url = served
    ws = raw_connection(url)
    for _ in range(50):
        ws.send(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes())
        assert wire.unpack(ws.recv(timeout=10))["type"] == "error"
    ws.close()


def test_policy_errors_reach_the_client(served, rng):
    _, _, url = served
    with RemotePolicy(url) as remote:
        with pytest.raises(RemotePolicyError, match="policy exploded"):
            remote.predict_batch(["explode now"], [frames(rng, 1)])
        assert remote.predict_batch(["fine"], [frames(rng, 1)])[0].shape == (4, 7)


def test_concurrent_clients_get_their_own_answers(served):
    _, policy, url = served
    results, errors = {}, []

    def client(i):
        try:
            r = np.random.default_rng(i)
            with RemotePolicy(url) as remote:
                for k in range(5):
                    ims = [frames(r, 1)]
                    got = remote.predict_batch([f"client {i} call {k}"], ims)[0]
                    want = policy.predict_batch([f"client {i} call {k}"], ims)[0]
                    results[(i, k)] = np.array_equal(got, want)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 20 and all(results.values())


def test_no_server_is_a_clear_error():
    with pytest.raises(ConnectionError, match="worldvla.serve"):
        RemotePolicy("ws://127.0.0.1:9", connect_timeout_s=0.5)


def test_evaluation_through_the_server_equals_in_process(tmp_path):
    from worldvla.eval.libero import main

    server = PolicyServer(HashPolicy(), port=0)
    url = server.start_in_thread()
    try:
        common = ["env_factory=worldvla.eval.fake_env:FakeEnv", "suites=[libero_goal]", "num_trials=2",
                  "max_steps=15", "videos=none"]
        assert main(common + [f"policy={url}", "num_workers=2", f"output_dir={tmp_path / 'remote'}"]) == 0
        assert main(common + ["policy=worldvla.eval.scripted:hash_policy", "num_workers=0",
                              f"output_dir={tmp_path / 'local'}"]) == 0
    finally:
        server.stop()

    def eps(d):
        recs = [json.loads(x) for x in (d / "episodes.jsonl").read_text().splitlines()]
        return {(r["task"], r["trial"]): (r["status"], r["steps"], r["fingerprint"]) for r in recs}

    assert eps(tmp_path / "remote") == eps(tmp_path / "local") and len(eps(tmp_path / "local")) == 6


def test_tiny_worldvla_checkpoint_round_trip(tmp_path, rng):
    """The real policy behind the server answers exactly as in-process (greedy, de-normalised)."""
    policy_mod = pytest.importorskip("worldvla.policy.policy")
    from worldvla.testing.fixtures import make_tiny_assets
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", make_tiny_assets(tmp_path / "assets"), chunk_size=3,
                                 resolution=256)
    policy = policy_mod.WorldVLAPolicy.from_pretrained(ckpt, device="cpu")
    server = PolicyServer(policy, port=0)
    url = server.start_in_thread()
    try:
        with RemotePolicy(url) as remote:
            assert (remote.chunk_size, remote.history, remote.resolution) == (3, 2, 256)
            texts = ["put the bowl on the stove", "open the top drawer of the cabinet"]
            images = [frames(rng, 1, 256), frames(rng, 2, 256)]
            got = remote.predict_batch(texts, images)
            want = [policy.predict(t, ims) for t, ims in zip(texts, images)]
    finally:
        server.stop()
    for g, w in zip(got, want):
        assert g.shape == (3, 7)
        np.testing.assert_array_equal(g, w)

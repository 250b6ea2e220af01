"""Server behaviour shared by the protocols: GET /health, the Origin allow-list, the connection cap,
the per-request episode cap, round-robin scheduling between connections, resize= and one-line errors."""

import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("websockets")

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from worldvla.config import parse_cli
from worldvla.eval.scripted import HashPolicy
from worldvla.policy import wire
from worldvla.policy.client import RemotePolicy, RemotePolicyError, _open
from worldvla.serve.server import PolicyServer, ServeConfig


def frames(rng, n=1, res=64):
    return [rng.integers(0, 256, (res, res, 3), dtype=np.uint8) for _ in range(n)]


def started(policy=None, **kw):
    server = PolicyServer(policy or HashPolicy(chunk_size=4, resolution=64), port=0, **kw)
    return server, server.start_in_thread()


def http_get(url, path):
    with urllib.request.urlopen(url.replace("ws://", "http://") + path, timeout=10) as r:
        return r.status, r.read().decode()


@pytest.mark.parametrize("protocol", ["worldvla", "openpi", "vla-eval"])
def test_health_answers_200(protocol):
    server, url = started(protocol=protocol)
    try:
        assert http_get(url, "/health") == (200, "ok\n")
        assert http_get(url, "/healthz?probe=1")[0] == 200
    finally:
        server.stop()


def test_browser_origins_are_refused_unless_allowed():
    server, url = started()
    allowing, allowing_url = started(allowed_origins=["http://localhost:3000"])
    try:
        for u in (url, allowing_url):
            with pytest.raises(InvalidStatus) as err:
                _open(connect, u, origin="http://evil.example")
            assert err.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            _open(connect, url, origin="http://localhost:3000")  # the default allow-list is empty
        ws = _open(connect, allowing_url, origin="http://localhost:3000")
        assert wire.unpack(ws.recv(timeout=10))["type"] == "hello"
        ws.close()
        with RemotePolicy(url) as remote:  # clients that send no Origin (every non-browser one) get in
            assert remote.chunk_size == 4
    finally:
        server.stop()
        allowing.stop()


def test_connection_cap():
    server, url = started(max_connections=2)
    try:
        first, second = RemotePolicy(url), RemotePolicy(url)
        with pytest.raises(InvalidStatus) as err:
            _open(connect, url)
        assert err.value.response.status_code == 503
        assert b"max_connections=2" in err.value.response.body
        first.close()
        deadline = time.monotonic() + 10
        while len(server._sessions) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with RemotePolicy(url) as third:  # a freed slot is usable again
            assert third.ping() >= 0
        second.close()
    finally:
        server.stop()


def test_episode_cap_refuses_large_requests_and_the_client_splits_them(rng):
    policy = HashPolicy(chunk_size=4, resolution=64)
    server, url = started(policy, max_batch=2, max_episodes_per_request=4)
    try:
        ws = _open(connect, url)
        hello = wire.unpack(ws.recv(timeout=10))
        assert hello["max_episodes_per_request"] == 4
        ims = [frames(rng) for _ in range(5)]
        ws.send(wire.pack({"type": "predict_batch", "id": 1, "instructions": ["x"] * 5, "images": ims}))
        reply = wire.unpack(ws.recv(timeout=10))
        assert reply["type"] == "error" and "5 episodes" in reply["message"]
        assert "max_episodes_per_request" in reply["message"]
        ws.close()
        texts = [f"task {i}" for i in range(9)]
        ims = [frames(rng) for _ in texts]
        with RemotePolicy(url) as remote:
            got = remote.predict_batch(texts, ims)
        want = policy.predict_batch(texts, ims)
        assert len(got) == 9 and all(np.array_equal(g, w) for g, w in zip(got, want))
        assert max(policy.batch_sizes[:-1]) <= 2  # slices of max_batch
    finally:
        server.stop()


class GatedPolicy(HashPolicy):
    """Its first call waits for `release`, so the test can queue a second client behind a large request;
    its 4th call waits (at most 10 s) for `small_done`, so 'answered before the large request' is not a race."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.entered, self.release, self.small_done = threading.Event(), threading.Event(), threading.Event()
        self.batches: list[list[str]] = []

    def predict_batch(self, instructions, *a, **k):
        self.entered.set()
        self.release.wait(30)
        if len(self.batches) == 3:
            self.small_done.wait(10)
        self.batches.append(list(instructions))
        return super().predict_batch(instructions, *a, **k)


def test_round_robin_between_connections(rng):
    policy = GatedPolicy(chunk_size=4, resolution=64)
    server, url = started(policy, max_batch=4, max_episodes_per_request=16)
    done = {}

    def client(name, n):
        with RemotePolicy(url) as remote:
            remote.predict_batch([f"{name} {i}" for i in range(n)], [frames(np.random.default_rng(i)) for i in range(n)])
        done[name] = time.monotonic()
        if name == "small":
            policy.small_done.set()

    try:
        big = threading.Thread(target=client, args=("big", 16))
        big.start()
        assert policy.entered.wait(30)
        small = threading.Thread(target=client, args=("small", 1))
        small.start()
        deadline = time.monotonic() + 10
        while server.pending_episodes() < 13 and time.monotonic() < deadline:  # 3 slices of big + small
            time.sleep(0.02)
        policy.release.set()
        big.join(60)
        small.join(60)
    finally:
        server.stop()
    # the 16-episode request goes in slices of 4; the other connection gets its turn between them
    assert [len(b) for b in policy.batches] == [4, 4, 1, 4, 4]
    assert policy.batches[2] == ["small 0"]
    assert done["small"] < done["big"]


def test_wrong_size_is_one_short_line_and_resize_fixes_it(rng):
    policy = HashPolicy(chunk_size=4, resolution=64)
    strict, strict_url = started(policy)
    lenient, lenient_url = started(policy, resize=True)
    ims = [frames(rng, 2, res=80)]
    try:
        with RemotePolicy(strict_url) as remote, pytest.raises(RemotePolicyError) as err:
            remote.predict_batch(["x"], ims)
        msg = str(err.value)
        assert "images[0][0] is 80x80 px but the policy takes 64x64" in msg and "resize=true" in msg
        assert "\n" not in msg and len(msg) < 300
        with RemotePolicy(lenient_url) as remote:
            got = remote.predict_batch(["x"], ims)[0]
    finally:
        strict.stop()
        lenient.stop()
    resized = [np.asarray(Image.fromarray(f).resize((64, 64), Image.BICUBIC)) for f in ims[0]]
    np.testing.assert_array_equal(got, policy.predict_batch(["x"], [resized])[0])


class ArrayReprPolicy(HashPolicy):
    def predict_batch(self, *a, **k):
        raise ValueError(f"cannot use this state:\n{np.zeros((40, 40))}")


def test_policy_errors_are_one_short_line(rng):
    server, url = started(ArrayReprPolicy(chunk_size=4, resolution=64))
    try:
        with RemotePolicy(url) as remote, pytest.raises(RemotePolicyError) as err:
            remote.predict_batch(["x"], [frames(rng)])
    finally:
        server.stop()
    msg = str(err.value)
    assert "ValueError: cannot use this state:" in msg and "\n" not in msg and len(msg) < 300


def test_serve_config_fields_from_the_cli():
    cfg = parse_cli(ServeConfig, ["protocol=vla-eval", "resize=true", "allowed_origins=[http://localhost:3000]",
                                  "max_connections=3", "max_episodes_per_request=8"])
    assert (cfg.protocol, cfg.resize, cfg.allowed_origins) == ("vla-eval", True, ["http://localhost:3000"])
    server = PolicyServer.from_config(HashPolicy(), cfg)
    assert (server.protocol, server.resize, server.max_connections, server.max_episodes_per_request,
            server.allowed_origins) == ("vla-eval", True, 3, 8, ("http://localhost:3000",))
    defaults = ServeConfig()
    assert (defaults.protocol, defaults.resize, defaults.allowed_origins) == ("worldvla", False, [])
    with pytest.raises(ValueError, match=r"protocol: 'grpc' not one of \['worldvla', 'openpi', 'vla-eval'\]"):
        ServeConfig(protocol="grpc")
    with pytest.raises(ValueError, match="max_connections must be >= 1"):
        ServeConfig(max_connections=0)


def test_worldvla_serve_command_parses_the_serve_config(capsys):
    from worldvla.cli import main

    with pytest.raises(SystemExit) as stop:  # the config loader refuses the choice, as every stage's CLI does
        main(["serve", "protocol=grpc"])
    assert stop.value.code == 2 and "protocol: 'grpc' not one of" in capsys.readouterr().err


def test_openpi_and_vla_eval_survive_garbage(rng):
    import io

    import msgpack

    from worldvla.serve.protocols import openpi, vla_eval

    big = io.BytesIO()
    Image.new("RGB", (5000, 5000)).save(big, format="PNG")  # a small file that would decode to 75 MB
    bomb = msgpack.packb({"type": "observation", "seq": 3, "timestamp": 0.0, "payload": {"images": {"agentview": {
        "__image__": True, "format": "png", "data": big.getvalue(), "shape": [5000, 5000, 3]}}}})
    garbage = [rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes() for _ in range(20)]
    garbage += [msgpack.packb({"type": "observation"}), msgpack.packb([1, 2]), "a text frame",
                msgpack.packb({b"__ndarray__": True, b"dtype": "|O", b"shape": [1], b"data": b"x"})]
    for protocol in ("openpi", "vla-eval"):
        server, url = started(protocol=protocol)
        try:
            ws = _open(connect, url)
            if protocol == "openpi":
                assert openpi.unpack(ws.recv(timeout=10))["protocol"] == "openpi"
            errors = []
            for payload in [*garbage, bomb]:
                ws.send(payload)
                reply = ws.recv(timeout=10)
                if protocol == "openpi":
                    assert isinstance(reply, str)
                    errors.append(reply)
                else:
                    msg = vla_eval.unpack(reply)
                    assert msg["type"] == "error"
                    errors.append(msg["payload"]["error"])
            assert all(e and "\n" not in e and len(e) < 300 for e in errors)
            if protocol == "vla-eval":
                assert "5000x5000 px is too large" in errors[-1]
            ws.close()
            assert http_get(url, "/health")[0] == 200  # still serving
        finally:
            server.stop()


# -- issue 23, point 6: clients that left, idle clients, huge requests -------------------------------
def wait_until(cond, timeout=10.0):
    """Poll `cond` (bounded in time) and return its last value."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


class BlockingPolicy(HashPolicy):
    """Its first call waits for `release` (at most 30 s), so a client can leave while its work is queued."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []

    def predict_batch(self, instructions, *a, **k):
        self.entered.set()
        self.release.wait(30)
        self.batches.append(list(instructions))
        return super().predict_batch(instructions, *a, **k)


def test_a_disconnect_cancels_the_clients_queued_work(rng):
    policy = BlockingPolicy(chunk_size=4, resolution=64)
    server, url = started(policy, max_batch=1, max_episodes_per_request=8)
    try:
        ws = _open(connect, url)
        wire.unpack(ws.recv(timeout=10))
        texts = [f"leaver {i}" for i in range(4)]  # 4 slices of 1: one runs, three wait in the queue
        ws.send(wire.pack({"type": "predict_batch", "id": 1, "instructions": texts,
                           "images": [frames(rng) for _ in texts]}))
        assert policy.entered.wait(10)
        assert wait_until(lambda: server.pending_episodes() == 3)
        ws.close()  # the client leaves while its request is being answered
        assert wait_until(lambda: server.pending_episodes() == 0 and not server._sessions)
        policy.release.set()
        with RemotePolicy(url) as other:  # queued after the leaver's work, if that were still there
            other.predict_batch(["stayer"], [frames(rng)])
        assert policy.batches == [["leaver 0"], ["stayer"]]  # the running call finished; the rest never ran
    finally:
        policy.release.set()
        server.stop()


def test_idle_connections_are_closed_and_free_their_slot():
    from websockets.exceptions import ConnectionClosed

    assert ServeConfig().idle_timeout_s == 300.0  # the default
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ServeConfig(idle_timeout_s=0)
    server, url = started(max_connections=1, idle_timeout_s=1.0)
    try:
        ws = _open(connect, url)
        wire.unpack(ws.recv(timeout=10))
        with pytest.raises(InvalidStatus):  # the one slot is taken
            _open(connect, url)
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=10)  # nothing sent: the server closes it after 1 s
        assert err.value.rcvd.code == 1008 and "idle_timeout_s" in err.value.rcvd.reason
        assert wait_until(lambda: not server._sessions)
        with RemotePolicy(url) as remote:  # the slot is free again, and an active client is not cut off
            for _ in range(3):
                assert remote.ping() >= 0
                time.sleep(0.1)
            assert wait_until(lambda: not server._sessions)  # then idle: closed by the server
            assert remote.ping() >= 0  # and the worldvla client reconnects on its next call
    finally:
        server.stop()


def test_episode_count_is_refused_before_the_frames_are_decoded(monkeypatch):
    from worldvla.serve.protocols import worldvla as proto

    decoded = []
    real_unpack = proto.wire.unpack
    monkeypatch.setattr(proto.wire, "unpack", lambda data: decoded.append(len(data)) or real_unpack(data))
    server, url = started(max_episodes_per_request=4)
    try:
        ws = _open(connect, url)
        real_unpack(ws.recv(timeout=10))
        tiny = np.zeros((2, 2, 3), np.uint8)  # never looked at: the count is read from the headers
        msg = {"type": "predict_batch", "images": [[tiny]] * 10_000, "instructions": ["x"] * 10_000, "id": 9}
        ws.send(wire.pack(msg))
        reply = real_unpack(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["id"] == 9
        assert "10000 episodes" in reply["message"] and "max_episodes_per_request" in reply["message"]
        assert decoded == []  # the request was never msgpack-decoded
        ws.close()
    finally:
        server.stop()
    assert wire.peek_request(wire.pack(msg)) == (9, 10_000)
    assert wire.peek_request(b"\xc1 not msgpack") == (None, None) and wire.peek_request("text") == (None, None)

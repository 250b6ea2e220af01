"""decode.compile travels from the eval / serve command lines to the policy's decode step."""

import numpy as np
import pytest

from worldvla.config import parse_cli
from worldvla.eval import runner
from worldvla.eval.config import COMPILE_ON_CUDA, DecodeConfig, EvalConfig, compile_step_for
from worldvla.policy.interface import load_policy
from worldvla.serve import __main__ as serve_main
from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint


class Loaded(Exception):
    """Stops the run once load_policy has been called."""


def test_none_is_off_until_proven_on_a_gpu():
    assert COMPILE_ON_CUDA is False  # flip only with a recorded GPU run showing identical tokens
    assert compile_step_for(DecodeConfig(), "cpu") is False
    assert compile_step_for(DecodeConfig(), "cuda") is COMPILE_ON_CUDA
    assert compile_step_for(DecodeConfig(), "cuda:1") is COMPILE_ON_CUDA
    assert compile_step_for(DecodeConfig(compile=True), "cpu") is True
    assert compile_step_for(DecodeConfig(compile=False), "cuda") is False


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), (None, False)])
def test_eval_cli_passes_decode_compile_to_load_policy(monkeypatch, value, expected):
    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setattr(runner, "load_policy", fake_load)
    argv = ["policy=some/ckpt"] + ([f"decode.compile={value}"] if value else [])
    cfg = parse_cli(EvalConfig, argv)
    with pytest.raises(Loaded):
        runner.Evaluation(cfg, progress=False)
    assert seen["compile_step"] is expected


def test_serve_cli_passes_decode_compile_to_load_policy(monkeypatch):
    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setattr("worldvla.policy.interface.load_policy", fake_load)
    with pytest.raises(Loaded):
        serve_main.main(["policy=some/ckpt", "decode.compile=true"])
    assert seen["compile_step"] is True


def test_checkpoint_policy_decodes_with_the_static_step(tmp_path, tiny_assets):
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, chunk_size=5, resolution=256)
    frame = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    with one_torch_thread():
        eager = load_policy(str(ckpt))
        static = load_policy(str(ckpt), compile_step=True)
        assert (eager.compile_step, static.compile_step) == (False, True)
        static.compile_step, static.static = False, True  # the static step without torch.compile (fast)
        want = eager.predict("pick up the bowl", [frame, frame])
        got = static.predict("pick up the bowl", [frame, frame])
    np.testing.assert_array_equal(got, want)
    assert static.model.cache_shape is not None and eager.model.cache_shape is None  # static caches are kept

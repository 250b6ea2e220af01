"""The GPU script's Python parts on CPU with tiny models: the same code paths benchmarks/gpu.sh runs."""

import importlib.util
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from worldvla.model import generate as G
from worldvla.model import image_decode as ID

pytestmark = pytest.mark.usefixtures("single_torch_thread")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_fastpath_and_world_sections(tmp_path):
    out = tmp_path / "decode.json"
    load("decode").main(["--model", "7b", "--layers", "1", "--width", "64", "--repeats", "1", "--sections",
                         "fastpath,world", "--batches", "1,3", "--world-resolution", "64", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["fastpath"]
    assert [(r["K"], r["batch"]) for r in rows] == [(5, 1), (5, 3), (10, 1), (10, 3)]
    for r in rows:  # CPU fp32: the static step must give the eager tokens (asserted inside too)
        assert r["static"]["equal_tokens_vs_eager"] == 1.0 and "graph" not in r
        assert r["eager"]["chunk_ms"]["min"] <= r["eager"]["chunk_ms"]["median"] <= r["eager"]["chunk_ms"]["max"]
    world = result["world"]
    assert world["generated_tokens"] == len(ID.image_span_plan(4, 4)) and world["static"]["equal_tokens_vs_eager"] == 1.0


def test_eval_throughput_on_the_toy_env(tmp_path):
    out = tmp_path / "eval.json"
    try:
        result = load("eval_throughput").main([
            "--policy", "7b", "--layers", "1", "--width", "128", "--vqgan", "small", "--workers", "2",
            "--seconds", "12", "--env-factory", "worldvla.eval.fake_env:FakeEnv", "--trials", "2", "--max-steps", "6",
            "--json", str(out)])
    finally:
        for child in mp.active_children():
            child.terminate()
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["episodes"] >= 1 and result["errors"] == 0, result
    call = result["policy_call"]
    assert call["calls"] >= 1 and call["mean_batch"] >= 1 and call["decode_ms_per_call"] > 0
    assert call["vqgan_encode_ms_per_call"] > 0 and result["extrapolated_2000_episodes_min"] > 0
    assert G.decode_action_chunks.__name__ == "decode_action_chunks"  # the timing wrapper was removed

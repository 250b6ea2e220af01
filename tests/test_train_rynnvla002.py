"""RynnVLA-002 training on CPU: wrist view + state shards, the continuous action head trained jointly.

- a RynnVLA-002 preset script runs two steps on tiny settings and writes a checkpoint with the head under
  the official `action_head.*` names, its config and the wrist / state / statistics settings;
- the head's L1 falls from its start to the best constant predictor's level on a tiny run, is logged separately
  and enters the total with train.action_head_weight;
- the saved head reloads (model.init_from) and predicts what the trained head predicted;
- every head parameter gets a gradient on every micro-batch, and FSDP on 2 CPU processes matches one process;
- data.recipe.with_wrist / with_state that do not describe the shards are clear errors.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from worldvla.config import ConfigError, load_config
from worldvla.train.config import TrainConfig
from worldvla.train.tracking import read_log

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_rynnvla002.yaml"
SMALL_HEAD = "{proj_dim: 32, num_heads: 2, ffn_dim: 64, dropout: 0.0}"


@pytest.fixture(scope="module")
def rynn_data(tmp_path_factory, tiny_assets):
    from worldvla.train.tiny_data import RYNNVLA002_STATS, make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("tiny_rynnvla002"), assets=tiny_assets, with_wrist=True,
                          with_state=True, **RYNNVLA002_STATS)


def _overrides(data, out, **kw):
    base = {"data.train": f"[{data.train}]", "data.tokenizer": str(data.tokenizer), "train.output_dir": str(out),
            "logging.progress_bar": "false", "logging.log_every": "1", "logging.plot": "false"}
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def test_rynnvla002_preset_script_runs_two_steps(rynn_data, tmp_path):
    env = {**os.environ, "NGPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_CONFIG", None)
    args = _overrides(rynn_data, tmp_path, **{
        "model.preset": "tiny", "model.init_from": "''", "model.action_head_config": SMALL_HEAD,
        "data.recipe.resolution": 64, "data.num_workers": 0, "train.precision": "fp32", "train.batch_size": 4,
        "train.max_steps": 2, "data.batching": "random"})
    res = subprocess.run(["bash", str(ROOT / "exps" / "train_rynnvla002_goal_256_continuous.sh"), *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ckpt = tmp_path / "checkpoints" / "step_00000002"
    settings = json.loads((ckpt / "worldvla.json").read_text())
    assert (settings["with_wrist"], settings["with_state"], settings["chunk_size"]) == (True, True, 5)
    assert settings["action_stats"]["min"][3] == pytest.approx(-0.24214286)  # rynnvla_action (from the preset)
    assert settings["world_action_stats"]["min"][3] == pytest.approx(-0.32571429)  # worldvla
    assert settings["state_stats"]["max"][2] == pytest.approx(1.47277813)
    assert settings["action_head"] == {"hidden_size": 64, "chunk_size": 5, "action_dim": 7, "proj_dim": 32,
                                       "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "dropout": 0.0,
                                       "mlp_blocks": 2, "loss_weight": 10.0, "mask_padding": False}
    from worldvla.model.action_head import ActionHead, ActionHeadConfig
    from worldvla.model.loading import load_checkpoint

    loaded = load_checkpoint(ckpt)  # the backbone loads as before; the head comes back as the official extras
    expected = {f"action_head.{k}" for k in ActionHead(ActionHeadConfig(**settings["action_head"])).state_dict()}
    assert set(loaded.extras) == expected
    assert "action_head.output_projection.model.mlp_resnet_blocks.1.ffn.1.weight" in expected
    assert any(r.get("action_l1") is not None for r in read_log(tmp_path / "train_log.jsonl"))

    from worldvla.policy.policy import WorldVLAPolicy  # the folder alone serves the wrist + state prompt

    policy = WorldVLAPolicy.from_pretrained(ckpt, device="cpu")
    assert policy.uses_wrist and policy.uses_state
    img = np.full((64, 64, 3), 90, np.uint8)
    actions = policy.predict("put the bowl on the stove", [img, img], wrist=[img, img], state=np.zeros(8))
    assert actions.shape == (5, 7) and np.isfinite(actions).all()


@pytest.mark.slow
def test_fsdp_two_cpu_processes_train_the_head_like_one(rynn_data, tmp_path):
    # action samples only: every row feeds the head and has 46 supervised tokens, so the mean of the two
    # processes' losses is the one-process loss; no dropout anywhere
    common = {"data.train": f"[{rynn_data.action}]", "data.kinds": "[action]", "train.max_steps": 4,
              "model.dropout": 0.0, "model.action_head_config": SMALL_HEAD, "train.save_every_steps": 0}
    curves = {}
    for name, procs, batch in (("one", 1, 8), ("two", 2, 4)):
        env = {**os.environ, "NGPU": str(procs), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "MASTER_PORT": str(29600 + os.getpid() % 1000)}
        env.pop("ACCELERATE_CONFIG", None)
        if procs > 1:
            env["ACCELERATE_CONFIG"] = str(ROOT / "configs/accelerate/fsdp_cpu.yaml")
        res = subprocess.run(["bash", str(ROOT / "exps" / "train_tiny_rynnvla002.sh"),
                              *_overrides(rynn_data, tmp_path / name, **common, **{"train.batch_size": batch})],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        curves[name] = {k: [r[k] for r in read_log(tmp_path / name / "train_log.jsonl")] for k in ("loss", "action_l1")}
    assert len(curves["two"]["loss"]) == 4  # updates 2 and 3 (the first runs at lr 0) shape steps 3 and 4
    for key in ("loss", "action_l1"):
        np.testing.assert_allclose(curves["two"][key], curves["one"][key], rtol=2e-5, err_msg=key)


@pytest.fixture(scope="module")
def head_run(rynn_data, tmp_path_factory):
    from worldvla.train.loop import train

    out = tmp_path_factory.mktemp("head_run")
    cfg = load_config(TrainConfig, TINY, _overrides(rynn_data, out, **{
        "data.train": f"[{rynn_data.action}]", "data.kinds": "[action]", "train.max_steps": 96,
        "train.save_every_steps": 0, "model.action_head_config": SMALL_HEAD,
        "model.activation_checkpointing": "false"}))  # a quarter faster; the script test covers checkpointing
    with torch.random.fork_rng():
        train(cfg)
    return out


def _constant_baseline(data) -> float:
    """L1 of the best constant prediction (per-dimension median of the bin-centre targets)."""
    from worldvla.data.datasets import PretokenizedDataset
    from worldvla.model.action_head import bin_centre_targets

    ds = PretokenizedDataset(data.action)
    targets = torch.stack([bin_centre_targets(torch.tensor([ds[i].labels]), 5)[0] for i in range(len(ds))])
    return float((targets - targets.reshape(-1, 7).median(0).values).abs().mean())


@pytest.mark.slow
def test_continuous_head_loss_falls(head_run, rynn_data):
    """The head trains: its L1 falls from its start to the level of the best constant predictor, every step,
    and enters the total as logged. Not asserted: that it beats the constant within these 96 steps. Measured
    over six runs (seeds 0-3, lr 2e-3 and 5e-3): last-12 L1 / constant = 0.78 once, 1.02-1.08 otherwise (the
    head's attention over ~100 prompt positions learns slowly at this size), so that bound only held for a
    lucky seed and a package update flipped it; the bounds below hold over all six with a margin
    (last / first 0.48-0.71, last / constant <= 1.08)."""
    recs = read_log(head_run / "train_log.jsonl")
    l1 = [r["action_l1"] for r in recs]
    assert len(l1) == 96 and all(v is not None for v in l1)  # action samples only: the head trains every step
    first, last = np.mean(l1[:3]), np.mean(l1[-12:])
    baseline = _constant_baseline(rynn_data)
    assert last < 0.8 * first, (first, last)
    assert last < 1.2 * baseline, (last, baseline)  # down to the data's median, from ~1.5-2x it
    for r in recs:  # total = CE (action tokens, class weight 1) + 1e-5 z + 10 x L1, each term logged
        assert r["loss"] == pytest.approx(r["action_ce"] + 1e-5 * r["z_loss"] + 10.0 * r["action_l1"], rel=1e-4)


@pytest.mark.slow
def test_saved_head_reloads_and_predicts_the_same(head_run):
    from worldvla.model.action_head import prefix_lengths
    from worldvla.train import modeling
    from worldvla.train.continuous import WithActionHead

    ckpt = head_run / "checkpoints" / "step_00000096"
    cfg = load_config(TrainConfig, ckpt / "train_config.yaml", [f"model.init_from={ckpt}"])
    model, _ = modeling.build_model(cfg)  # backbone and head from the exported folder
    assert isinstance(model, WithActionHead)
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "model.safetensors"))
    for k, v in model.action_head.state_dict().items():
        torch.testing.assert_close(v, saved[f"action_head.{k}"], msg=k)
    model.eval()
    block = [10004] + [10100] * 7 + [15004]
    ids = torch.tensor([[0] + [16200] * 30 + [8710] + block * 2] * 2)  # two action blocks: rows the head reads
    with torch.no_grad():
        _, out = model(ids)
        hidden = model.core.forward_hidden(ids)
        direct = model.action_head(hidden, prefix_lengths(ids))
    assert out.rows.tolist() == [True, True]
    torch.testing.assert_close(out.pred, direct)
    assert prefix_lengths(ids).tolist() == [32, 32]  # the head reads the prompt up to the first action start


def test_every_head_parameter_gets_a_gradient_on_every_micro_batch():
    """Distributed reductions need the same gradient tensors on every process, with or without action rows."""
    from worldvla.model.action_head import ActionHead
    from worldvla.model.config import ModelConfig
    from worldvla.model.transformer import Transformer
    from worldvla.train.continuous import WithActionHead, head_config, head_l1

    torch.manual_seed(0)
    backbone = Transformer(ModelConfig.preset("tiny"))
    model = WithActionHead(backbone, ActionHead(head_config({"proj_dim": 16, "num_heads": 2, "ffn_dim": 32}, 64, 2, 10.0)))
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"model", "lm_head", "action_head"}
    block = [10004] + [10100] * 7 + [15004]
    world = torch.tensor([[0] + [16200] * 8 + [8710] + block + [8710] + [8197, 9, 8196, 8710]])  # one action block
    action = torch.tensor([[0] + [16200] * 8 + [8710] + block * 2 + [8710]])
    for ids, rows in ((world, 0), (action, 1)):
        model.zero_grad(set_to_none=True)
        _, out = model(ids)
        l1, n = head_l1(out, ids, chunk_size=2)
        assert n == rows
        (l1 + 0.0).backward()
        grads = [p.grad for p in model.action_head.parameters()]
        assert all(g is not None for g in grads)
        total = sum(float(g.abs().sum()) for g in grads)
        assert (total == 0.0) == (rows == 0) and (float(l1) == 0.0) == (rows == 0)


def test_view_and_state_flags_must_match_the_shards(rynn_data, tmp_path):
    from worldvla.train.loop import train

    for flag, pattern in (("data.recipe.with_wrist=false", r"data.train\[0\] = .*up to 4 images.*data.recipe.with_wrist=false"),
                          ("data.recipe.with_state=false", r"data.train\[0\] = .*carry a state block but data.recipe.with_state=false"),
                          ("data.recipe.history=1", r"up to 4 images, but data.recipe.history=1 x 2 view")):
        cfg = load_config(TrainConfig, TINY, _overrides(rynn_data, tmp_path / flag, **dict([flag.split("=")])))
        with pytest.raises(ConfigError, match=pattern):
            train(cfg)
    cfg = load_config(TrainConfig, TINY, _overrides(rynn_data, tmp_path / "stats", **{"data.recipe.world_action_stats": "''"}))
    with pytest.raises(ConfigError, match=r"world action stats min/max .* but data.recipe.world_action_stats \(null: "
                                          r"data.recipe.action_stats\)='rynnvla_action'"):
        train(cfg)

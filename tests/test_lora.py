"""LoRA fine-tuning (train.lora) on CPU with the tiny model, started from an official-layout folder
(config.json + model.safetensors, no worldvla.json, no tokenizer/), with the continuous action head:

- only the adapters and the head change: the merged weights are the base's plus scale x B A exactly, every
  other tensor is the base's;
- the loss falls; step checkpoints hold the adapters alone (small), the last one the merged model too;
- the merged checkpoint gives the logits of base + adapters (to fp32 rounding) and the same actions through
  WorldVLAPolicy.from_pretrained + predict; its worldvla.json records the LoRA settings and the base's sha256;
- `worldvla lora-merge` merges an adapter-only step on request (the last step: the run's own merged weights);
- a run stopped after an adapter-only checkpoint and resumed continues the same loss curve; another base is refused;
- the chunked cross entropy (train.loss_chunk) gives the loss and gradients of the whole one, in the loop too, and
  under bf16 the logits reach it in bf16 (accelerate's fp32 conversion undone).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worldvla.config import ConfigError, load_config
from worldvla.model.loading import load_checkpoint, read_state_dict
from worldvla.recipe import sha256_file
from worldvla.testing.tiny_model import write_tiny_checkpoint
from worldvla.train import loop, lora
from worldvla.train.config import LORA_TARGETS, TrainConfig
from worldvla.train.loss import LossConfig, compute_loss
from worldvla.train.tracking import read_log

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SMALL_HEAD = "{proj_dim: 32, num_heads: 2, ffn_dim: 64, dropout: 0.0}"
STEPS, SAVE_EVERY = 16, 8


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_assets):
    from worldvla.train.tiny_data import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("tiny_data"), assets=tiny_assets)


@pytest.fixture(scope="module")
def official_base(tmp_path_factory, tiny_assets):
    """A released-style folder: weights and config.json only (tokenizer shipped separately, no worldvla.json)."""
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("official") / "base", tiny_assets, resolution=64)
    (ckpt / "worldvla.json").unlink()
    shutil.rmtree(ckpt / "tokenizer")
    return ckpt


def _cfg(data, base, out, **kw) -> TrainConfig:
    ov = {"data.train": f"[{data.train}]", "data.tokenizer": str(data.tokenizer), "train.output_dir": str(out),
          "model.init_from": str(base), "model.action_head": "true", "model.action_head_config": SMALL_HEAD,
          "train.lora.rank": 8, "train.lora.alpha": 16, "train.lr": 1e-2, "train.min_lr": 1e-2,
          "train.weight_decay": 0.0, "train.max_steps": STEPS, "train.save_every_steps": SAVE_EVERY,
          "train.batch_size": 4, "data.kinds": "[action]", "logging.progress_bar": "false",
          "logging.log_every": 1, "logging.plot": "false", "logging.wandb": "false"}
    ov.update(kw)
    return load_config(TrainConfig, TINY, [f"{k}={v}" for k, v in ov.items()])


def _curve(out):
    return [(r["step"], r["loss"]) for r in read_log(Path(out) / "train_log.jsonl") if "loss" in r]


@pytest.fixture(scope="module")
def run(tiny_data, official_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    loop.train(_cfg(tiny_data, official_base, out))
    return out


def _step(out, step):
    return Path(out) / "checkpoints" / f"step_{step:08d}"


def _adapted(base, ckpt):
    """The base model with the checkpoint's adapters: what training computed, unmerged."""
    opts = load_config(TrainConfig, ckpt / "train_config.yaml").train.lora
    model = load_checkpoint(base, dtype=torch.float32).model
    lora.apply(model, opts, torch.float32)
    adapters = {k: v for k, v in load_file(ckpt / lora.ADAPTERS_FILE).items() if ".lora_" in k}
    res = model.load_state_dict(adapters, strict=False)
    assert not res.unexpected_keys and not [k for k in res.missing_keys if ".lora_" in k]
    return model.eval()


# -- what trains --------------------------------------------------------------------------------
def test_only_adapters_and_head_change(run, official_base):
    base = read_state_dict(official_base)
    final = _step(run, STEPS)
    merged = read_state_dict(final)
    adapters = load_file(final / lora.ADAPTERS_FILE)
    scale = 16 / 8
    changed = 0
    for k, w in base.items():
        prefix = k.removesuffix(".weight")
        if f"{prefix}.lora_A.default.weight" in adapters:  # official names match ours for the layer linears
            b, a = adapters[f"{prefix}.lora_B.default.weight"], adapters[f"{prefix}.lora_A.default.weight"]
            torch.testing.assert_close(merged[k], w + scale * b @ a, rtol=0, atol=1e-6)
            changed += bool((b != 0).any())
        else:
            assert torch.equal(merged[k], w), f"{k} changed but is not adapted"
    assert changed == 7 * 2  # every projection of both layers moved away from B = 0
    head_mid = load_file(_step(run, SAVE_EVERY) / lora.ADAPTERS_FILE)
    heads = [k for k in adapters if k.startswith("action_head.")]
    assert heads and any(not torch.equal(adapters[k], head_mid[k]) for k in heads)  # the head trains too


def test_loss_falls(run):
    losses = [v for _, v in _curve(run)]
    assert len(losses) == STEPS
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses


def test_step_checkpoints_hold_the_adapters_alone(run):
    mid, final = _step(run, SAVE_EVERY), _step(run, STEPS)
    assert not list(mid.glob("model*.safetensors")) and not (mid / "worldvla.json").exists()
    assert json.loads((mid / lora.SETTINGS_FILE).read_text())["merged"] is False
    state_bytes = sum(f.stat().st_size for f in (mid / "train_state").rglob("*") if f.is_file())
    model_bytes = (final / "model.safetensors").stat().st_size
    assert state_bytes < model_bytes / 5  # adapters + head + their AdamW moments only


# -- the merged checkpoint ------------------------------------------------------------------------
def test_merged_checkpoint_records_lora_and_base(run, official_base):
    settings = json.loads((_step(run, STEPS) / "worldvla.json").read_text())["lora"]
    assert (settings["rank"], settings["alpha"], settings["merged"]) == (8, 16, True)
    assert settings["target_modules"] == list(LORA_TARGETS)
    base = settings["base"]
    assert base["init_from"] == str(official_base)
    assert base["sha256"]["model.safetensors"] == sha256_file(official_base / "model.safetensors")
    assert base["sha256"]["config.json"] == sha256_file(official_base / "config.json")


def test_merged_logits_and_actions_are_base_plus_adapters(run, official_base):
    from worldvla.policy.policy import WorldVLAPolicy

    final = _step(run, STEPS)
    adapted = _adapted(official_base, final)
    merged = load_checkpoint(final, dtype=torch.float32).model.eval()
    ids = torch.randint(0, merged.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), adapted(ids), rtol=1e-5, atol=1e-5)

    img = np.full((64, 64, 3), 120, np.uint8)
    frames = [img, np.roll(img, 3, axis=0)]
    policy = WorldVLAPolicy.from_pretrained(final, device="cpu")
    want = policy.predict("put the bowl on the stove", frames)
    policy.model = adapted  # same settings, tokenizers and head; the backbone unmerged
    got = policy.predict("put the bowl on the stove", frames)
    assert want.shape == (5, 7) and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_lora_merge_on_request(run, official_base, tmp_path):
    from worldvla.train.lora_merge import main

    mid = _step(run, SAVE_EVERY)
    assert main([str(mid), f"out={tmp_path / 'merged'}"]) == 0
    merged = load_checkpoint(tmp_path / "merged", dtype=torch.float32).model.eval()
    ids = torch.randint(0, merged.cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), _adapted(official_base, mid)(ids), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "merged" / "worldvla.json").read_text())["step"] == SAVE_EVERY
    # the last step merged on request is the run's own merged checkpoint, tensor for tensor
    main([str(_step(run, STEPS)), f"out={tmp_path / 'last'}"])
    ours, runs = read_state_dict(tmp_path / "last"), read_state_dict(_step(run, STEPS))
    assert ours.keys() == runs.keys() and all(torch.equal(ours[k], runs[k]) for k in ours)
    with pytest.raises(SystemExit) as err:  # not a LoRA step folder: one line naming the file, exit status 2
        main([str(official_base)])
    assert err.value.code == 2


# -- resume ---------------------------------------------------------------------------------------
def test_stopped_run_resumes_on_the_same_curve(run, tiny_data, official_base, tmp_path, monkeypatch):
    out = tmp_path / "stopped"
    real_step = loop.train_step

    def stop_after_checkpoint(r, batches, step):
        if step == SAVE_EVERY + 2:  # two steps past the adapter-only checkpoint: those two are redone
            raise KeyboardInterrupt
        return real_step(r, batches, step)

    monkeypatch.setattr(loop, "train_step", stop_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_cfg(tiny_data, official_base, out))
    assert not list(_step(out, SAVE_EVERY).glob("model*.safetensors"))
    redone = []

    def count(r, batches, step):
        redone.append(step)
        return real_step(r, batches, step)

    monkeypatch.setattr(loop, "train_step", count)
    loop.train(_cfg(tiny_data, official_base, out))
    assert redone == list(range(SAVE_EVERY, STEPS))  # resumed at the adapter-only checkpoint, not from 0
    a = dict(_curve(run))
    b = dict(_curve(out))  # the redone steps' lines replace the stopped run's
    assert sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6, atol=0)


def test_resume_on_another_base_is_refused(run):
    info = json.loads((_step(run, SAVE_EVERY) / lora.SETTINGS_FILE).read_text())["base"]
    lora.check_base(_step(run, SAVE_EVERY), info)
    lora.check_base(_step(run, SAVE_EVERY), {**info, "init_from": "/moved/elsewhere"})  # same files, other path
    other = {**info, "sha256": {**info["sha256"], "model.safetensors": "0" * 64}}
    with pytest.raises(ConfigError, match="model.init_from"):
        lora.check_base(_step(run, SAVE_EVERY), other)


# -- config and the chunked loss -----------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [("train.lora.rank", "-1"), ("train.lora.dropout", "1.0"),
                                            ("train.lora.target_modules", "[lm_head]"), ("train.lora.merge", "never"),
                                            ("train.loss_chunk", "-2")])
def test_bad_settings_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # the choices when loading, the rest in validate
        load_config(TrainConfig, TINY, ["data.train=[x]", f"{key}={value}"]).validate()


@pytest.mark.parametrize("form", ["official", "paper"])
def test_chunked_cross_entropy_equals_the_whole(form):
    from worldvla.testing.tiny_model import make_tiny_model

    model = make_tiny_model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 50), generator=g)
    labels = ids.clone()
    labels[:, :10] = -100
    labels[0, 1:4] = 8197  # a world row (image start among its targets)
    out = {}
    for chunk in (0, 7):
        model.zero_grad()
        loss = compute_loss(model(ids), labels, LossConfig(form=form, chunk=chunk))
        loss.total.backward()
        out[chunk] = (loss, model.lm_head.weight.grad.clone(), model.layers[0].mlp.up_proj.weight.grad.clone())
    (whole, *g0), (chunked, *g1) = out[0], out[7]
    for name in ("total", "ce", "action_ce", "world_ce", "z_loss"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-6, atol=1e-7)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_chunked_loss_keeps_the_logits_in_bf16_under_accelerate():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from worldvla.testing.tiny_model import make_tiny_model
    from worldvla.train.distributed import keep_low_precision_outputs

    AcceleratorState._reset_state(True)  # the process-wide state of the fp32 runs above; bf16 here, reset after
    try:
        model = Accelerator(cpu=True, mixed_precision="bf16").prepare(make_tiny_model())
        ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(3))
        assert model(ids).dtype == torch.float32  # accelerate's wrapper: a whole fp32 copy of the logits
        assert keep_low_precision_outputs(model)
        assert model(ids).dtype == torch.bfloat16  # autocast kept, the conversion gone
        assert not keep_low_precision_outputs(make_tiny_model())  # not prepared: nothing to undo
    finally:
        AcceleratorState._reset_state(True)


def test_chunked_loss_in_the_loop_gives_the_same_curve(tiny_data, official_base, tmp_path):
    common = {"train.lora.rank": 0, "model.action_head": "false", "train.max_steps": 3, "train.save_every_steps": 0,
              "train.lr": 2e-3, "train.min_lr": 2e-3}
    curves = []
    for chunk in (0, 16):
        out = tmp_path / f"chunk{chunk}"
        loop.train(_cfg(tiny_data, official_base, out, **common, **{"train.loss_chunk": chunk}))
        curves.append([v for _, v in _curve(out)])
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5)

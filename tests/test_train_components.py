"""Training pieces that need no model: configs and presets, schedule, batch order, checkpoints, logging, launchers."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from worldvla.config import ConfigError, load_config, parse_cli
from worldvla.train.config import TrainConfig
from worldvla.train.optim import EpochSchedule, build_optimizer
from worldvla.train.sampler import BatchPlan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SUITES = {"spatial": 5, "object": 5, "goal": 5, "10": 10}
PRESETS = sorted(p for p in CONFIGS.glob("*.yaml"))


# -- configs ------------------------------------------------------------------------------------
BASES = ("worldvla.yaml", "rynnvla002.yaml")  # shared recipes: no data of their own, no launcher


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_validates(path):
    overrides = ["data.train=[shared/base/has/no/data]"] if path.name in BASES else []
    cfg = load_config(TrainConfig, path, overrides)
    cfg.validate()
    assert cfg.data.recipe.history == 2 and cfg.train.world_weight == 0.04


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("res", [256, 512])
def test_suite_presets_follow_the_paper(suite, res):
    cfg = load_config(TrainConfig, CONFIGS / f"libero_{suite}_{res}.yaml")
    t = cfg.train
    assert (cfg.data.recipe.resolution, cfg.data.recipe.chunk_size) == (res, SUITES[suite])
    assert (t.lr, t.min_lr, t.warmup_epochs, t.weight_decay, t.betas) == (5e-6, 5e-6, 0.01, 0.1, [0.9, 0.95])
    assert (t.epochs, t.batch_size, t.clip_grad, t.seed, t.z_loss_weight) == (40, 8, 4.0, 0, 1e-5)
    assert (cfg.model.dropout, cfg.data.max_seq_len, cfg.model.action_mask) == (0.05, 4096, True)
    assert sorted(cfg.data.kinds) == ["action", "world"]
    assert all(f"ck_{SUITES[suite]}" in str(p) and str(p).endswith(f"_{res}.json") for p in cfg.data.train + cfg.data.val)


def test_ablation_presets_differ_in_one_thing():
    base = load_config(TrainConfig, CONFIGS / "libero_goal_256.yaml")
    no_mask = load_config(TrainConfig, CONFIGS / "ablation_no_action_mask.yaml")
    act = load_config(TrainConfig, CONFIGS / "ablation_action_only.yaml")
    world = load_config(TrainConfig, CONFIGS / "ablation_world_only.yaml")
    assert no_mask.model.action_mask is False and base.model.action_mask is True
    assert act.data.kinds == ["action"] and world.data.kinds == ["world"]
    for c in (no_mask, act, world):
        assert c.data.train == base.data.train and c.train.lr == base.train.lr


# released rynnvla-002/exps_pretokenize values per suite: (K, lr, weight decay, dropout)
RYNNVLA002 = {"goal": (5, 5e-6, 0.15, 0.08), "object": (5, 5e-6, 0.1, 0.05), "spatial": (10, 5e-6, 0.1, 0.05),
              "10": (10, 8e-6, 0.18, 0.1)}


@pytest.mark.parametrize("suite", RYNNVLA002)
def test_rynnvla002_presets_follow_the_released_scripts(suite):
    k, lr, wd, dropout = RYNNVLA002[suite]
    disc = load_config(TrainConfig, CONFIGS / f"rynnvla002_{suite}_256_discrete.yaml").validate()
    cont = load_config(TrainConfig, CONFIGS / f"rynnvla002_{suite}_256_continuous.yaml").validate()
    for cfg in (disc, cont):
        d, t = cfg.data.recipe, cfg.train
        assert (d.resolution, d.history, d.chunk_size, d.with_wrist, d.with_state) == (256, 2, k, True, True)
        assert (d.action_stats, d.world_action_stats, d.state_stats) == ("rynnvla_action", "worldvla", "rynnvla_state")
        assert (t.lr, t.min_lr, t.weight_decay, cfg.model.dropout) == (lr, lr, wd, dropout)
        assert (t.epochs, t.batch_size, t.warmup_epochs, t.clip_grad, t.z_loss_weight, t.world_weight) == (
            40, 8, 0.01, 4.0, 1e-5, 0.04)
        assert cfg.data.val == [] and sorted(cfg.data.kinds) == ["action", "world"]  # --train_only on all splits
        (train,) = cfg.data.train
        assert train.name == f"libero_{suite}_his_2_all_third_view_wrist_w_state_{k}_a2i_256.json"
    assert disc.model.action_head is False and cont.model.action_head is True
    assert cont.train.action_head_weight == 10.0 and cont.model.action_head_config == {}  # official head sizes
    assert disc.train.output_dir != cont.train.output_dir


def test_continuous_head_config_errors():
    from worldvla.train.continuous import head_config

    cfg = head_config({"proj_dim": 32}, hidden_size=64, chunk_size=5, loss_weight=10.0)
    assert (cfg.proj_dim, cfg.hidden_size, cfg.chunk_size, cfg.num_layers, cfg.loss_weight) == (32, 64, 5, 2, 10.0)
    with pytest.raises(ConfigError, match=r"model.action_head_config: unknown field\(s\) \['proj'\]"):
        head_config({"proj": 32}, 64, 5, 10.0)
    with pytest.raises(ConfigError, match="data.recipe.chunk_size"):
        head_config({"chunk_size": 3}, 64, 5, 10.0)
    with pytest.raises(ConfigError, match="model.action_head needs data.recipe.chunk_size >= 2"):
        load_config(TrainConfig, CONFIGS / "tiny_rynnvla002.yaml", ["data.recipe.chunk_size=1"]).validate()


def test_deepspeed_zero3_config_through_accelerate(monkeypatch):
    """The YAML as `accelerate launch` reads it -> accelerate's DeepSpeedPlugin -> the config DeepSpeed gets
    (needs accelerate only, not deepspeed)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    from worldvla.train.distributed import fill_deepspeed_config

    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / "accelerate" / "deepspeed_zero3.yaml"), "-m", "worldvla.train"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed and not args.cpu and args.mixed_precision == "bf16"
    args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    ds = DeepSpeedPlugin().deepspeed_config
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # exported weights are whole 16-bit tensors
    cfg = load_config(TrainConfig, CONFIGS / "libero_goal_256.yaml", ["train.batch_size=4", "train.grad_accum=2"])
    filled = fill_deepspeed_config(ds, cfg.train)
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"]) == (4, 2)
    assert filled["gradient_clipping"] == 4.0 and "train_batch_size" not in filled
    assert "auto" not in json.dumps(filled)  # nothing left for DeepSpeed to guess


def test_bad_yaml_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\ntrain:\n  learning_rate: 1.0e-4\n" % (CONFIGS / "tiny.yaml"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\].*valid: .*'lr'"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, CONFIGS / "tiny.yaml", ["train.lrr=1"])
    with pytest.raises(SystemExit) as exc:
        parse_cli(TrainConfig, ["--config", str(bad)])
    assert exc.value.code == 2
    with pytest.raises(ConfigError, match="data.kinds"):
        load_config(TrainConfig, CONFIGS / "tiny.yaml", ["data.kinds=[actions]", "data.train=[x]"]).validate()


def test_cli_overrides_any_field():
    cfg = parse_cli(TrainConfig, ["--config", str(CONFIGS / "libero_goal_256.yaml"), "train.lr=1.0e-5",
                                  "--model.action_mask", "false", "data.kinds=[world]"])
    assert cfg.train.lr == 1e-5 and cfg.model.action_mask is False and cfg.data.kinds == ["world"]


# -- accelerate configs and launchers -----------------------------------------------------------
def test_accelerate_configs():
    expect = {"fsdp.yaml": "FSDP", "fsdp1.yaml": "FSDP", "fsdp_cpu.yaml": "FSDP", "deepspeed_zero3.yaml": "DEEPSPEED"}
    for name, kind in expect.items():
        data = yaml.safe_load((CONFIGS / "accelerate" / name).read_text())
        assert data["distributed_type"] == kind
    ds = yaml.safe_load((CONFIGS / "accelerate" / "deepspeed_zero3.yaml").read_text())["deepspeed_config"]
    assert ds["zero_stage"] == 3
    fsdp = yaml.safe_load((CONFIGS / "accelerate" / "fsdp.yaml").read_text())
    assert fsdp["mixed_precision"] == "bf16" and fsdp["fsdp_config"]["fsdp_reshard_after_forward"] is True


def test_every_preset_has_a_launcher_and_back():
    scripts = {p.name for p in (ROOT / "exps").glob("train_*.sh")} - {"train_launch.sh"}
    presets = {p.stem for p in PRESETS} - {Path(b).stem for b in BASES}
    assert scripts == {f"train_{p}.sh" for p in presets}
    for name in scripts:
        text = (ROOT / "exps" / name).read_text()
        assert 'source "$ROOT/exps/env.sh"' in text and '"$@"' in text
        (config,) = re.findall(r"launch_train (configs/\S+\.yaml)", text)
        assert (ROOT / config).is_file()


def test_deepspeed_missing_is_a_clear_error(monkeypatch):
    from worldvla.train.distributed import LaunchError, check_deepspeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import fails as when not installed
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(LaunchError, match=r"pip install 'worldvla\[deepspeed\]'"):
        check_deepspeed()


# -- schedule and optimizer ---------------------------------------------------------------------
def test_official_schedule_warmup_then_constant():
    s = EpochSchedule(lr=5e-6, min_lr=5e-6, warmup_epochs=0.01, epochs=40, steps_per_epoch=1000)
    assert s(0) == 0.0  # official: the first update runs at lr 0 (fractional epoch 0)
    assert s(5) == pytest.approx(2.5e-6)
    assert s(10) == s(500) == s(39999) == pytest.approx(5e-6)


def test_schedule_cosine_when_min_lr_is_lower():
    s = EpochSchedule(lr=1.0, min_lr=0.1, warmup_epochs=1, epochs=3, steps_per_epoch=10)
    assert s(10) == pytest.approx(1.0) and s(20) == pytest.approx(0.55) and s(30) == pytest.approx(0.1)


def test_adamw_decays_every_parameter():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(m.parameters(), 1e-3, 0.1, [0.9, 0.95])
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and len(opt.param_groups[0]["params"]) == 4


# -- batch order --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["random", "length_grouped"])
def test_batch_plan_is_a_deterministic_truncated_permutation(mode):
    lengths = np.random.default_rng(0).integers(50, 600, size=203)
    plan = BatchPlan(lengths, batch_size=4, world_size=2, grad_accum=3, seed=0, mode=mode, group_batches=4)
    assert plan.steps_per_epoch == 203 // 24
    e0, e0b, e1 = plan.epoch(0), plan.epoch(0), plan.epoch(1)
    assert np.array_equal(e0, e0b) and not np.array_equal(e0, e1)
    assert len(np.unique(e0)) == e0.size == plan.steps_per_epoch * 24
    # every rank's micro-batches together are exactly the global batches, disjoint
    for step in range(plan.steps_per_epoch):
        got = np.concatenate([idx for r in range(2) for s, _, idx in plan.micro_batches(0, r) if s == step])
        assert sorted(got) == sorted(e0[step])
    # resuming at a step yields the tail of the uninterrupted order
    full = [idx.tolist() for _, _, idx in plan.micro_batches(1, 1)]
    tail = [idx.tolist() for _, _, idx in plan.micro_batches(1, 1, start_step=3)]
    assert tail == full[3 * 3:]


def test_random_plan_is_the_official_shuffle():
    plan = BatchPlan(np.ones(40), batch_size=4, world_size=1, seed=7, mode="random")
    assert np.array_equal(plan.epoch(2).reshape(-1), np.random.default_rng(9).permutation(40))


def test_length_grouping_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = np.where(rng.random(2000) < 0.5, rng.integers(280, 320, 2000), rng.integers(600, 640, 2000))

    def waste(mode):
        plan = BatchPlan(lengths, batch_size=8, seed=0, mode=mode)
        b = lengths[plan.epoch(0)]
        return 1 - b.sum() / (b.max(1).sum() * b.shape[1])

    grouped, shuffled = waste("length_grouped"), waste("random")
    assert grouped < 0.05 and shuffled > 0.2


def test_too_small_dataset_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchPlan(np.ones(5), batch_size=4, world_size=2)


# -- checkpoints --------------------------------------------------------------------------------
def _toy(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    return m, torch.optim.AdamW(m.parameters(), lr=1e-2)


def _steps(m, opt, n):
    out = []
    for _ in range(n):
        loss = m(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        out.append(loss.item())
    return out


def test_checkpoint_roundtrip_atomic_and_keep_last(tmp_path):
    from accelerate import Accelerator

    from worldvla.train.checkpoint import TMP_PREFIX, CheckpointManager

    acc = Accelerator(cpu=True)
    exported = []

    def export(sd, folder):
        exported.append(sorted(sd))
        torch.save(sd, folder / "weights.pt")

    m, opt = _toy(0)
    mgr = CheckpointManager(tmp_path / "ck", acc, keep_last=2)
    _steps(m, opt, 3)
    for step in (3, 6, 9):
        mgr.save(step, m, opt, {"note": step}, export)
    assert [p.name for p in mgr.checkpoints()] == ["step_00000006", "step_00000009"]
    assert exported[0] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    expected = _steps(m, opt, 4)  # continues from the state saved at "step 9"

    (tmp_path / "ck" / f"{TMP_PREFIX}step_00000012").mkdir()  # a save killed half-way
    m2, opt2 = _toy(1)
    torch.manual_seed(123)  # the RNG must come from the checkpoint, not from here
    mgr2 = CheckpointManager(tmp_path / "ck", acc, keep_last=2)
    mgr2.clean_partial()
    assert not list((tmp_path / "ck").glob(TMP_PREFIX + "*"))
    state = mgr2.load(mgr2.latest(), m2, opt2)
    assert state["step"] == 9 and state["note"] == 9
    assert _steps(m2, opt2, 4) == expected


def test_loading_an_inference_folder_as_resume_is_explained(tmp_path):
    from accelerate import Accelerator

    from worldvla.train.checkpoint import CheckpointError, CheckpointManager

    m, opt = _toy(0)
    with pytest.raises(CheckpointError, match="model.init_from"):
        CheckpointManager(tmp_path, Accelerator(cpu=True)).load(tmp_path, m, opt)


# -- logging ------------------------------------------------------------------------------------
def test_log_truncation_on_resume_and_plot(tmp_path):
    from worldvla.train.tracking import LOG_FILE, RunLogger, plot_losses, read_log

    cfg = load_config(TrainConfig, CONFIGS / "tiny.yaml", ["logging.progress_bar=false", "logging.wandb=false"])
    lg = RunLogger(tmp_path, cfg, True, 10)
    for s in range(1, 7):
        lg.log({"step": s, "loss": 10.0 / s, "action_ce": 5.0 / s, "world_ce": None, "z_loss": 0.1})
    lg.close(plot=False)
    with open(tmp_path / LOG_FILE, "a") as f:
        f.write('{"step": 7, "lo')  # a line cut by a kill
    RunLogger(tmp_path, cfg, True, 10, resume_step=4).close(plot=False)  # the checkpoint holds update 4
    assert [r["step"] for r in read_log(tmp_path / LOG_FILE)] == [1, 2, 3, 4]
    lines = (tmp_path / LOG_FILE).read_text().splitlines()  # append-only: the lines past 4 are kept
    assert [json.loads(x).get("step") for x in lines[:6]] == [1, 2, 3, 4, 5, 6]
    assert lines[6:] == ['{"step": 7, "lo', '{"resumed_at_step": 4}']
    png = plot_losses(tmp_path / LOG_FILE, tmp_path / "curve.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_a_fresh_start_appends_to_an_existing_log(tmp_path):
    from worldvla.train.tracking import LOG_FILE, RunLogger, read_log

    cfg = load_config(TrainConfig, CONFIGS / "tiny.yaml", ["logging.progress_bar=false", "logging.wandb=false"])
    old = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (tmp_path / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))  # a run that never saved
    lg = RunLogger(tmp_path, cfg, True, 10, resume_step=0)
    lg.log({"step": 1, "loss": 5.0})
    lg.close(plot=False)
    lines = [json.loads(x) for x in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert lines == old + [{"resumed_at_step": 0}, {"step": 1, "loss": 5.0}]  # the history is not replaced
    assert read_log(tmp_path / LOG_FILE) == [{"step": 1, "loss": 5.0}]  # and the curve is the new run's


def test_missing_wandb_is_announced(tmp_path, monkeypatch, caplog):
    import builtins
    import logging

    from worldvla.train.tracking import RunLogger

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    cfg = load_config(TrainConfig, CONFIGS / "tiny.yaml", ["logging.progress_bar=false", "logging.wandb=true"])
    with caplog.at_level(logging.INFO, logger="worldvla.train"):
        lg = RunLogger(tmp_path, cfg, True, 5)
    assert lg.wandb is None and "wandb is not installed" in caplog.text
    lg.log({"step": 1, "loss": 1.0})
    assert json.loads((tmp_path / "train_log.jsonl").read_text())["loss"] == 1.0


def test_wandb_offline_by_default_online_by_flag(tmp_path, monkeypatch):
    import sys
    import types

    from worldvla.train.tracking import RunLogger

    calls = []
    fake = types.ModuleType("wandb")

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for flag, mode in (([], "offline"), (["logging.wandb_mode=online"], "online")):
        calls.clear()
        cfg = load_config(TrainConfig, CONFIGS / "tiny.yaml", ["logging.progress_bar=false", *flag])
        lg = RunLogger(tmp_path / mode, cfg, True, 5)
        lg.log({"step": 3, "loss": 2.0, "action_ce": 1.5})
        lg.close(plot=False)
        assert calls[0][0] == "init" and calls[0][1]["mode"] == mode and calls[0][1]["project"] == "worldvla"
        assert calls[1] == ("log", 3, {"loss": 2.0, "action_ce": 1.5}) and calls[-1] == ("finish",)


def test_mfu_flops_formula():
    from worldvla.train.tracking import flops_per_token

    assert flops_per_token(7e9, 32, 4096, 2048) == pytest.approx(6 * 7e9 + 12 * 32 * 4096 * 2048)

"""Issue 23, item 8: errors that named no file (or were silently accepted) are one line naming the file and
field, or a refusal, before any work is done."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldvla.config import ConfigError, load_config
from worldvla.errors import InputFileError
from worldvla.recipe import Recipe

pytestmark = pytest.mark.usefixtures("single_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
RES = 64


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    """1 task x 1 trajectory x 2 frames at 64 px, action conversations K=1."""
    from worldvla.data.conversations import ConversationsConfig, generate

    root = tmp_path_factory.mktemp("seams")
    rng = np.random.default_rng(0)
    trj = root / "exp" / "put_the_bowl_on_the_stove" / "trj_0"
    for d in ("action", "imgs"):
        (trj / d).mkdir(parents=True)
    for j in range(2):
        np.save(trj / "action" / f"action_{j}.npy", rng.uniform(-0.9, 0.9, 7))
        Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(trj / "imgs" / f"image_{j}.png")
    files = generate(ConversationsConfig(base_dir=root / "exp", output_dir=root / "convs", train_ratio=1.0, recipe=Recipe(history=1, chunk_size=1)))
    return files["train"]["action"]


def pretok_cfg(inputs, out, assets, **kw):
    from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions

    tok = TokenizerOptions(path=assets.root, recipe=Recipe(resolution=RES, **kw.pop("tokenizer", {})))
    return PretokenizeConfig(inputs=list(inputs), out_dir=out, tokenizer=tok, **kw)


# -- statistics ----------------------------------------------------------------------------------
def test_six_d_action_stats_are_refused_before_any_frame_is_encoded(convs, tiny_assets, tmp_path, monkeypatch):
    from worldvla.data import pretokenize as P

    stats = tmp_path / "stats6.json"
    stats.write_text(json.dumps({"min": [-1.0] * 6, "max": [1.0] * 6}))
    monkeypatch.setattr(P, "encode_frames", lambda *a, **k: pytest.fail("frames encoded before the stats check"))
    with pytest.raises(InputFileError, match=rf"^{stats}: min: action_stats must be 7-D, got 6-D"):
        P.pretokenize(pretok_cfg([convs], tmp_path / "out", tiny_assets, tokenizer={"action_stats": str(stats)}))


def test_recipe_file_with_six_d_action_stats_is_refused(tmp_path):
    from worldvla.recipe import Recipe

    path = tmp_path / "worldvla.json"
    path.write_text(json.dumps({"chunk_size": 5, "action_stats": {"min": [-1.0] * 6, "max": [1.0] * 6}}))
    with pytest.raises(InputFileError, match=rf"^{path}: action_stats: action_stats must be 7-D, got 6-D"):
        Recipe.from_file(path)


def test_statistics_with_min_equal_to_max_are_refused(tmp_path):
    from worldvla.recipe import Recipe
    from worldvla.stats import NormStats

    lo, hi = [-1.0] * 7, [1.0] * 6 + [-1.0]  # gripper min == max: every gripper value maps to one bin
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"min": lo, "max": hi}))
    with pytest.raises(ValueError, match=rf"^{path}: min\[6\] == max\[6\] = -1.0"):
        NormStats.from_json(path)
    recipe = tmp_path / "worldvla.json"
    recipe.write_text(json.dumps({"action_stats": {"min": lo, "max": hi}}))
    with pytest.raises(InputFileError, match=rf"^{recipe}: action_stats: min\[6\] == max\[6\]"):
        Recipe.from_file(recipe)


# -- tokenizer files -------------------------------------------------------------------------------
def test_truncated_text_tokenizer_is_named(tiny_assets, tmp_path):
    from worldvla.tokenizers import TextTokenizer

    path = tmp_path / "text_tokenizer.json"
    path.write_bytes(tiny_assets.tokenizer_json.read_bytes()[:5000])
    with pytest.raises(InputFileError, match=rf"^{path}: not valid JSON .*truncated tokenizer file"):
        TextTokenizer(path)


def test_vqgan_yaml_with_a_non_number_is_named(tiny_assets, tmp_path):
    from worldvla.model.vqgan import VQGANConfig

    path = tmp_path / "vqgan.yaml"
    path.write_text(re.sub(r"(?m)^(\s+)ch: .*$", r"\1ch: wide", tiny_assets.vqgan_yaml.read_text()))
    with pytest.raises(InputFileError, match=rf"^{path}: model.params.ddconfig.ch: expected a int, got 'wide'"):
        VQGANConfig.from_yaml(path)


# -- config.json -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "field"), [("hidden_size", 128, "hidden_size"),
                                                     ("vocab_size", 20000, "vocab_size"),
                                                     ("num_hidden_layers", 3, "num_hidden_layers")])
def test_config_json_that_does_not_fit_the_weights_is_named(tmp_path, key, value, field):
    from worldvla.model.loading import load_checkpoint, save_model
    from worldvla.testing.tiny_model import make_tiny_model

    folder = tmp_path / "ckpt"
    save_model(make_tiny_model(0), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputFileError, match=rf"^{folder / 'config.json'}: {field}: ") as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value)


# -- training data, through the train CLI -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, tiny_assets):
    from worldvla.train.tiny_data import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("tiny_data"), assets=tiny_assets)


def _missing(s):
    shutil.rmtree(s)


def _truncated_shard(s):
    f = s / "shards" / "shard_00000" / "input_ids.npy"
    f.write_bytes(f.read_bytes()[:200])


def _deleted_shard(s):
    shutil.rmtree(s / "shards" / "shard_00000")


def _truncated_manifest(s):
    f = s / "manifest.json"
    f.write_bytes(f.read_bytes()[:100])


def _empty_set(s):
    m = json.loads((s / "manifest.json").read_text())
    (s / "manifest.json").write_text(json.dumps({**m, "shards": [], "n_samples": 0}))


def _short_labels(s):
    f = s / "shards" / "shard_00000" / "labels.npy"
    np.save(f, np.load(f)[:-3])


@pytest.mark.parametrize("damage", [_missing, _truncated_shard, _deleted_shard, _truncated_manifest, _empty_set,
                                    _short_labels], ids=lambda f: f.__name__.strip("_"))
def test_damaged_training_set_is_one_line_from_the_train_cli(tiny_data, tmp_path, capsys, damage):
    from worldvla.train.loop import main

    broken = tmp_path / "action"
    shutil.copytree(tiny_data.action, broken)
    damage(broken)
    args = ["--config", str(TINY), f"data.train=[{broken}]", f"data.tokenizer={tiny_data.tokenizer}",
            f"train.output_dir={tmp_path / 'out'}", "logging.progress_bar=false", "train.max_steps=1"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: data.train") and str(broken) in err and "\n" not in err, err


def test_labels_shorter_than_input_ids_are_refused_at_load(tiny_data, tmp_path):
    from worldvla.data.shards import ShardReader

    shard = tmp_path / "shard"
    shutil.copytree(tiny_data.action / "shards" / "shard_00000", shard)
    np.save(shard / "labels.npy", np.load(shard / "labels.npy")[:-3])
    with pytest.raises(InputFileError, match=rf"^{shard / 'labels.npy'}: labels: .* entries, expected"):
        ShardReader(shard)


# -- conversations and pretokenize options ----------------------------------------------------------
def test_non_utf8_conversation_file_is_named(tmp_path):
    from worldvla.data.pretokenize import load_records

    path = tmp_path / "convs.json"
    path.write_bytes(b'[{"conversations": "\xff\xfe"}]')
    with pytest.raises(InputFileError, match=rf"^{path}: not UTF-8 text"):
        load_records([path])


def test_empty_conversation_list_is_refused(tmp_path):
    from worldvla.data.pretokenize import load_records

    path = tmp_path / "convs.json"
    path.write_text("[]")
    with pytest.raises(InputFileError, match=rf"^{path}: the conversation list is empty"):
        load_records([path])


def test_frame_chunk_zero_is_refused(convs, tiny_assets, tmp_path):
    from worldvla.data.pretokenize import pretokenize

    with pytest.raises(ValueError, match="frame_chunk must be >= 1, got 0"):
        pretokenize(pretok_cfg([convs], tmp_path / "out", tiny_assets, frame_chunk=0))


def test_pickled_frame_cache_chunk_is_named_not_its_png(convs, tiny_assets, tmp_path):
    from worldvla.data.pretokenize import pretokenize

    cfg = pretok_cfg([convs], tmp_path / "out", tiny_assets)
    pretokenize(cfg)
    chunk = tmp_path / "out" / "frames" / "chunk_00000.npy"
    codes = np.load(chunk)
    rows = np.empty(len(codes), dtype=object)
    rows[:] = list(codes)
    np.save(chunk, rows, allow_pickle=True)  # the same rows, as a pickle
    cfg.out_dir = tmp_path / "again"
    cfg.frame_cache = tmp_path / "out" / "frames"
    with pytest.raises(InputFileError, match=rf"^{chunk}: not a frame-cache chunk"):
        pretokenize(cfg)


# -- evaluation ------------------------------------------------------------------------------------
FAKE = ["env_factory=worldvla.eval.fake_env:FakeEnv", "suites=[libero_goal]", "tasks=[0]", "num_trials=1",
        "max_steps=4", "videos=none", "num_workers=0"]


def test_corrupt_eval_run_json_is_named(tiny_assets, tmp_path, capsys):
    from worldvla.eval.libero import main
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, seed=0)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "run.json").write_text('{"config": {"suites": [')  # killed mid-write by another tool
    with pytest.raises(SystemExit) as exit_:
        main(FAKE + [f"policy={ckpt}", f"output_dir={out}"])
    assert exit_.value.code == 2
    assert f"error: {out / 'run.json'}: not valid JSON" in capsys.readouterr().err


def test_chunk_size_beyond_the_context_is_refused_before_any_episode(tiny_assets, tmp_path, capsys):
    from worldvla.eval.libero import main
    from worldvla.testing.tiny_model import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", tiny_assets, seed=0, chunk_size=100000)
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_:
        main(FAKE + [f"policy={ckpt}", f"output_dir={out}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {ckpt / 'worldvla.json'}: chunk_size: chunk_size=100000" in err and "max_seq_len" in err
    assert not (out / "episodes.jsonl").exists()


# -- training config --------------------------------------------------------------------------------
def test_lr_below_min_lr_is_refused_and_equal_stays_valid():
    from worldvla.train.config import TrainConfig

    cfg = load_config(TrainConfig, TINY, ["train.lr=1e-4", "train.min_lr=1e-3"])
    with pytest.raises(ConfigError, match=r"train.lr=0.0001 is below train.min_lr=0.001"):
        cfg.validate()
    tiny = load_config(TrainConfig, TINY, [])
    assert tiny.train.lr == tiny.train.min_lr and tiny.validate() is tiny


def test_lerobot_statistics_of_a_constant_dimension_are_one_error_line(tmp_path):
    import h5py

    from worldvla.data.lerobot import LeRobotError, compute_min_max

    path = tmp_path / "episode_000000.hdf5"
    action = np.random.default_rng(0).uniform(-1, 1, (5, 7))
    action[:, 6] = 1.0  # a gripper that never opens in this data
    with h5py.File(path, "w") as f:
        f.create_dataset("action", data=action)
    with pytest.raises(LeRobotError, match=rf"^{tmp_path}: dataset 'action' over 1 episode file\(s\): min\[6\] == max\[6\]"):
        compute_min_max([path], "action")

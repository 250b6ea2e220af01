"""data.state_jitter (worldvla/data/augment.py): the training augmentation that moves each prompt state token
by a few bins. Checked on an action sample with a state block made by the real StateTokenizer, through
TrainSet (the dataset the training loop reads), and through the training loop itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worldvla import vocab as V
from worldvla.data.augment import STATE_BIN_IDS, jitter_state
from worldvla.data.sequence import Sample
from worldvla.tokenizers.action import StateTokenizer

ROOT = Path(__file__).resolve().parents[1]


def _sample() -> Sample:
    """A prompt holding text, an 8-token state block (its ends pinned to the first and last bin) and a
    supervised answer; one supervised token carries a state-bin id to show labels are never touched."""
    state = StateTokenizer()
    lo, hi = STATE_BIN_IDS
    block = state.encode(np.array([0.0, 0.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.0]))
    block[:2] = lo, hi  # the first and the last bin
    ids = [V.BOS_ID, 100, 101, state.start_id, *block.tolist(), state.end_id, 200, lo + 5]
    labels = [V.IGNORE_INDEX] * (len(ids) - 2) + [200, lo + 5]
    return Sample(ids, labels, kind="action")


def test_jitter_moves_only_prompt_state_tokens_within_the_bins():
    s = _sample()
    lo, hi = STATE_BIN_IDS
    moved = [jitter_state(s, 3, np.random.default_rng(k)) for k in range(50)]
    ids0 = np.array(s.input_ids)
    is_state = (ids0 >= lo) & (ids0 <= hi) & (np.array(s.labels) == V.IGNORE_INDEX)
    assert is_state.sum() == 8
    for m in moved:
        ids = np.array(m.input_ids)
        assert m.labels == s.labels and len(ids) == len(ids0)
        np.testing.assert_array_equal(ids[~is_state], ids0[~is_state])  # text, block ends, answer: untouched
        assert (np.abs(ids[is_state] - ids0[is_state]) <= 3).all() and ((ids >= lo) & (ids <= hi))[is_state].all()
    deltas = np.stack([np.array(m.input_ids)[is_state] - ids0[is_state] for m in moved])
    assert set(np.unique(deltas[:, 2:])) == set(range(-3, 4))  # every shift in [-3, 3] happens
    assert (deltas[:, 0] >= 0).all() and (deltas[:, 1] <= 0).all()  # clipped at the first / last bin
    assert jitter_state(s, 0, np.random.default_rng(0)) is s


def test_trainset_draws_by_seed_epoch_and_index(monkeypatch):
    """The draw is a function of (train.seed, epoch, index): a resumed run repeats it, a new epoch changes it."""
    from worldvla.train.data import TrainSet

    ts = TrainSet.__new__(TrainSet)
    ts.index = np.array([[0, 0], [0, 0]])
    ts.parts = [[_sample()]]
    assert ts[0].input_ids == _sample().input_ids  # off by default
    ts.state_jitter, ts.seed = 4, 1
    a, b = ts[0].input_ids, ts[1].input_ids
    assert a != _sample().input_ids and a == ts[0].input_ids and a != b
    ts.epoch = 1
    assert ts[0].input_ids != a


def test_bad_state_jitter_is_one_config_error():
    from worldvla.config import ConfigError
    from worldvla.train.config import TrainConfig

    cfg = TrainConfig()
    cfg.data.train = ["x"]
    cfg.data.state_jitter = -1
    with pytest.raises(ConfigError, match="data.state_jitter"):
        cfg.validate()


def test_the_training_loop_jitters_by_epoch(tmp_path, tiny_assets, monkeypatch):
    """data.state_jitter reaches the dataset the loop reads, with train.seed, and each epoch's loader is made
    after the dataset learnt its epoch (so epochs draw differently and a resumed epoch draws the same)."""
    from worldvla.config import load_config
    from worldvla.train import loop
    from worldvla.train.config import TrainConfig
    from worldvla.train.tiny_data import RYNNVLA002_STATS, make_tiny_data

    data = make_tiny_data(tmp_path / "data", assets=tiny_assets, with_state=True, **RYNNVLA002_STATS)
    seen = []
    real = loop.make_loader

    def spy(dataset, plan, epoch, *args, **kw):
        seen.append((epoch, dataset.epoch, dataset.state_jitter, dataset.seed))
        return real(dataset, plan, epoch, *args, **kw)

    monkeypatch.setattr(loop, "make_loader", spy)
    overrides = [f"data.train=[{data.train}]", f"data.tokenizer={data.tokenizer}", f"train.output_dir={tmp_path / 'out'}",
                 "logging.progress_bar=false", "logging.plot=false", "model.preset=tiny", "model.init_from=''",
                 "data.recipe.resolution=64", "data.num_workers=0", "train.precision=fp32", "train.batch_size=8",
                 "train.epochs=2", "train.max_steps=0", "train.seed=5", "data.state_jitter=2", "data.batching=random",
                 "data.recipe.with_wrist=false", "model.action_head_config={proj_dim: 32, num_heads: 2, ffn_dim: 64, dropout: 0.0}"]
    loop.train(load_config(TrainConfig, ROOT / "configs" / "tiny_rynnvla002.yaml", overrides))
    assert [s[0] for s in seen] == [0, 1] and all(e == d and j == 2 and seed == 5 for e, d, j, seed in seen), seen

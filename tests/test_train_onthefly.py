"""data.source=conversations (official "NoPretokenize"): the trainer tokenises conversation files on the fly.

- the first batches (and the batches from a resumed data position) equal those of the pretokenized shards;
- lengths, kind filtering and the layout check need no tokenisation and agree with the shards;
- three optimizer steps run through worldvla.train.loop.train with the same losses as the shards;
- a missing or bad conversation file stops with the entry and the file named.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from worldvla.config import ConfigError, load_config
from worldvla.train.config import TrainConfig
from worldvla.train.tracking import read_log

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_assets):
    """(TinyData, [world conversations, action conversations]): the conversation files the shards were made from."""
    from worldvla.train.tiny_data import make_tiny_data

    data = make_tiny_data(tmp_path_factory.mktemp("tiny_onthefly"), assets=tiny_assets)
    (manifest,) = (data.root / "convs").glob("*_conversations_manifest.json")
    files = json.loads(manifest.read_text())["files"]["train"]
    return data, [data.root / "convs" / files["world"], data.root / "convs" / files["action"]]


def _cfg(data, out, **kw):
    over = {"data.train": f"[{data.train}]", "data.tokenizer": str(data.tokenizer), "train.output_dir": str(out),
            "logging.progress_bar": "false", "logging.log_every": "1", "logging.wandb": "false",
            "logging.plot": "false", **kw}
    return load_config(TrainConfig, TINY, [f"{k}={v}" for k, v in over.items()])


def _conv_cfg(tiny, out, **kw):
    data, convs = tiny
    return _cfg(data, out, **{"data.source": "conversations", "data.train": "[" + ",".join(map(str, convs)) + "]",
                              **kw})


def _batches(dataset, cfg, start_step, n, workers=0):
    from worldvla.train.data import make_loader
    from worldvla.train.sampler import BatchPlan

    d, t = cfg.data, cfg.train
    plan = BatchPlan(dataset.lengths, t.batch_size, 1, t.grad_accum, t.seed, d.batching, d.group_batches)
    it = iter(make_loader(dataset, plan, 0, 0, start_step, d.max_seq_len, workers))
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.input_ids, y.input_ids)
        assert torch.equal(x.labels, y.labels)
        assert torch.equal(x.lengths, y.lengths)
        assert x.spans == y.spans


def test_batches_equal_the_shards(tiny, tmp_path):
    from worldvla.train.data import TrainSet, check_views

    data, _ = tiny
    shards_cfg = _cfg(data, tmp_path, **{"data.max_seq_len": 300})
    conv_cfg = _conv_cfg(tiny, tmp_path, **{"data.max_seq_len": 300})  # no frame cache: the VQ-GAN runs here
    d = conv_cfg.data
    shards = TrainSet(shards_cfg.data.train, d.kinds, d.max_seq_len, data=shards_cfg.data)
    convs = TrainSet(d.train, d.kinds, d.max_seq_len, data=d)
    assert len(convs) == len(shards) > 100
    np.testing.assert_array_equal(convs.lengths, shards.lengths)  # computed without encoding a frame
    assert len(np.unique(shards.lengths)) > 1  # world and action samples differ: length grouping is exercised
    _same(_batches(convs, conv_cfg, 0, 3), _batches(shards, shards_cfg, 0, 3))
    # a resumed run's data position, tokenised in a loader worker process (one VQ-GAN for both files)
    _same(_batches(convs, conv_cfg, 5, 2, workers=1), _batches(shards, shards_cfg, 5, 2))
    check_views(convs, d)  # the layout check reads the records
    with pytest.raises(ConfigError, match=r"data.train\[1\] = .*action.*hold up to 2 images, but data.recipe.history=3"):
        check_views(convs, _conv_cfg(tiny, tmp_path, **{"data.recipe.history": 3}).data)


def test_kind_filter_matches_the_kind_shards(tiny, tmp_path):
    from worldvla.train.data import TrainSet

    data, _ = tiny
    d = _conv_cfg(tiny, tmp_path, **{"data.kinds": "[action]"}).data
    convs = TrainSet(d.train, d.kinds, d.max_seq_len, data=d)
    shards = TrainSet([data.action], ["action", "world"], d.max_seq_len)
    np.testing.assert_array_equal(convs.lengths, shards.lengths)
    assert set(convs.index[:, 0].tolist()) == {1}  # every sample from the action file
    for i in (0, len(convs) - 1):
        assert convs[i].input_ids == shards[i].input_ids and convs[i].labels == shards[i].labels


def test_three_steps_through_train_match_the_shards(tiny, tmp_path):
    from worldvla.train.loop import train

    data, _ = tiny
    steps = {"train.max_steps": 3, "train.batch_size": 4}
    conv = train(_conv_cfg(tiny, tmp_path / "convs", **steps, **{"data.frame_cache": str(data.root / "frames")}))
    ref = train(_cfg(data, tmp_path / "shards", **steps))
    assert conv["steps"] == 3 and Path(conv["checkpoint"]).name == "step_00000003"
    got = [(r["step"], r["loss"]) for r in read_log(Path(conv["log"])) if "loss" in r]
    want = [(r["step"], r["loss"]) for r in read_log(Path(ref["log"])) if "loss" in r]
    assert [s for s, _ in got] == [1, 2, 3] and all(np.isfinite(v) for _, v in got)
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)


def test_missing_and_bad_conversation_files_are_named(tiny, tmp_path):
    from worldvla.data.sequence import RecordError
    from worldvla.train.data import DataError, TrainSet

    _, (world, action) = tiny

    def open_with(paths, **kw):
        d = _conv_cfg(tiny, tmp_path, **{"data.train": "[" + ",".join(map(str, paths)) + "]", **kw}).data
        return TrainSet(d.train, d.kinds, d.max_seq_len, data=d)

    with pytest.raises(DataError, match=r"data.train\[1\] = .*nowhere.json: conversation file not found"):
        open_with([world, tmp_path / "nowhere.json"])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"conversations": ')
    with pytest.raises(DataError, match=r"data.train\[1\] = .*bad.json: .*not valid JSON"):
        open_with([world, bad])
    records = json.loads(action.read_text())
    records[3]["image"] = records[3]["image"][:1]  # two image placeholders, one image
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"data.train\[0\] = .*broken.json: record .*broken.json\[3\]: more image"):
        open_with([broken])
    with pytest.raises(DataError, match=r"data.frame_cache = .*: not a frame cache"):
        open_with([action], **{"data.frame_cache": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"data.source: 'jsonl' not one of \['shards', 'conversations'\]"):
        _conv_cfg(tiny, tmp_path, **{"data.source": "jsonl"}).validate()
    # a record whose image vanished after the start is named when it is drawn
    trj = tmp_path / "trj"
    shutil.copytree(Path(records[0]["image"][0]).parent, trj)
    records[0]["image"] = [str(trj / Path(p).name) for p in records[0]["image"]]
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(records[:1]))
    ds = open_with([moved])
    shutil.rmtree(trj)
    with pytest.raises(RecordError, match=r"moved.json\[0\].*image file not found"):
        ds[0]
    # a record without supervised tokens is left out, as pretokenize leaves it out
    records = json.loads(action.read_text())[:4]
    records.insert(1, {**records[1], "conversations": records[1]["conversations"][:1], "action": []})  # no answer
    empty = tmp_path / "empty_answer.json"
    empty.write_text(json.dumps(records))
    ds = open_with([empty])
    assert len(ds) == 4 and ds.index[:, 1].tolist() == [0, 2, 3, 4]
    assert ds[1].input_ids == open_with([action])[1].input_ids

"""Pretokenize, datasets, concatenation, collate and the official record reader, on tiny assets."""

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldvla.data.conversations import ConversationsConfig, generate
from worldvla.data.pretokenize import TokenizerOptions
from worldvla.data.sequence import RecordError, SequenceBuilder
from worldvla.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
RES = 256


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    """1 task x 2 trajectories x 4 frames at 256 px (third + wrist + state), conversations K=2."""
    root = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    for i in range(2):
        trj = root / "exp" / "put_the_bowl_on_the_stove" / f"trj_{i}"
        for d in ("action", "imgs_third_view", "imgs_wrist", "eef_gripper_state"):
            (trj / d).mkdir(parents=True)
        for j in range(4):
            np.save(trj / "action" / f"action_{j}.npy", rng.uniform(-0.9, 0.9, 7))
            np.save(trj / "eef_gripper_state" / f"eef_gripper_state_{j}.npy", rng.uniform(-0.3, 0.3, 8))
            for d in ("imgs_third_view", "imgs_wrist"):
                img = rng.integers(0, 256, (RES // 8, RES // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
                Image.fromarray(img).save(trj / d / f"image_{j}.png")
    files = generate(ConversationsConfig(base_dir=root / "exp", output_dir=root / "convs", train_ratio=1.0, recipe=Recipe(history=2, chunk_size=2, with_wrist=True, with_state=True)))
    return root, files["train"]["action"], files["train"]["world"]


def tok_cfg(assets, **kw):
    return TokenizerOptions(path=assets.root, recipe=Recipe(resolution=RES, **kw))


def run_pretok(inputs, out, assets, **kw):
    from worldvla.data.pretokenize import PretokenizeConfig, pretokenize

    return pretokenize(PretokenizeConfig(inputs=list(inputs), out_dir=out, tokenizer=tok_cfg(assets), **kw))


def same_sample(a, b):
    assert a.input_ids == b.input_ids
    assert a.labels == b.labels
    assert a.spans == b.spans


def test_pretokenized_equals_on_the_fly_and_builder(convs, tiny_assets, text_tokenizer, image_tokenizer, tmp_path):
    from worldvla.data.datasets import OnTheFlyDataset, PretokenizedDataset

    _, action_json, world_json = convs
    manifest = run_pretok([action_json, world_json], tmp_path / "tok", tiny_assets, shard_size=4)
    n_action, n_world = len(json.loads(action_json.read_text())), len(json.loads(world_json.read_text()))
    assert manifest["n_samples"] == n_action + n_world == 12
    assert manifest["kinds"] == {"action": n_action, "world": n_world}
    assert len(manifest["shards"]) == 3 and manifest["tokenizer"]["vqgan.ckpt_sha256"]
    ids = np.load(tmp_path / "tok" / "shards" / "shard_00000" / "input_ids.npy", mmap_mode="r")
    assert ids.dtype == np.uint32 and isinstance(ids, np.memmap)
    pre = PretokenizedDataset(tmp_path / "tok")
    fly = OnTheFlyDataset([action_json, world_json], tok_cfg(tiny_assets).recipe.with_tokenizer(tiny_assets.root),
                          tiny_assets.root)
    builder = SequenceBuilder(text_tokenizer, image_tokenizer.image_to_tokens)  # independent path, default stats
    records = json.loads(action_json.read_text()) + json.loads(world_json.read_text())
    assert len(pre) == len(fly) == 12 and pre.lengths.sum() == manifest["n_tokens"]
    for i in range(12):
        same_sample(pre[i], fly[i])
        same_sample(pre[i], builder.build(records[i]))
        assert pre.kind(i) == fly.kind(i) == ("action" if i < n_action else "world")
    s = pre[n_action]  # world sample: [BOS] text I(t) I_w(t) A(t) E | I(t+1) I_w(t+1) E
    assert [sp.kind for sp in s.spans] == ["image", "image", "action", "image", "image"]
    assert sum(lab != -100 for lab in s.labels) == 2 * 276 + 1


def _shard_arrays(folder):
    out = {}
    for shard in sorted((folder / "shards").glob("shard_*")):
        for f in sorted(shard.glob("*.npy")):
            out[f"{shard.name}/{f.name}"] = np.load(f)
        info = json.loads((shard / "info.json").read_text())
        out[f"{shard.name}/info"] = {k: v for k, v in info.items() if k not in ("seconds", "images_encoded")}
    return out


@pytest.mark.slow
def test_kill_and_resume_gives_identical_output(convs, tiny_assets, tmp_path):
    from worldvla.data.pretokenize import CRASH_ENV

    _, action_json, world_json = convs
    out = tmp_path / "killed"
    args = [sys.executable, str(REPO / "data" / "pretokenize.py"), f"inputs=[{action_json},{world_json}]",
            f"out_dir={out}", f"tokenizer.path={tiny_assets.root}", "shard_size=1", "frame_chunk=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # 1) SIGKILL while frames are being encoded (16 frames: seconds of work)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (out / "frames" / "chunk_00002.json").is_file():
        assert proc.poll() is None, "pretokenize exited before it could be killed"
        assert time.time() < deadline, "no frame chunk written within 180 s"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    n_chunks = len(list((out / "frames").glob("chunk_*.json")))
    assert 3 <= n_chunks < 16 and not list((out / "shards").glob("shard_*"))
    # 2) resume, then die hard after 3 shards (a kill at a known point of the shard phase)
    crashed = subprocess.run(args, cwd=REPO, env={**env, CRASH_ENV: "3"}, capture_output=True, check=False)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert len(list((out / "frames").glob("chunk_*.json"))) == 16  # only the missing frames were encoded
    assert sorted(p.name for p in (out / "shards").glob("shard_*")) == [f"shard_0000{i}" for i in range(3)]
    assert not (out / "manifest.json").exists()
    # 3) finish through the CLI; compare with one uninterrupted run
    subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True)
    full = run_pretok([action_json, world_json], tmp_path / "full", tiny_assets, shard_size=1)
    resumed = json.loads((out / "manifest.json").read_text())
    assert resumed["timing"]["frames_encoded_this_run"] == 0
    for key in ("fingerprint", "n_samples", "n_tokens", "n_supervised", "kinds", "shards", "tokenizer", "inputs"):
        assert resumed[key] == full[key], key
    a, b = _shard_arrays(out), _shard_arrays(tmp_path / "full")
    assert a.keys() == b.keys() and len(a) == 12 * 8
    for k in a:
        if isinstance(a[k], dict):
            assert a[k] == b[k], k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not list((out / "shards").glob(".tmp_*"))


def test_frame_cache_is_shared_between_runs(convs, tiny_assets, tmp_path):
    _, action_json, world_json = convs
    cache = tmp_path / "frames256"
    w = run_pretok([world_json], tmp_path / "w", tiny_assets, frame_cache=cache)
    a = run_pretok([action_json], tmp_path / "a", tiny_assets, frame_cache=cache)
    assert w["timing"]["frames_encoded_this_run"] == 16  # 2 trajectories x 4 frames x 2 views
    assert a["timing"]["frames_encoded_this_run"] == 0  # the action set uses the same frames
    from worldvla.data.datasets import OnTheFlyDataset, PretokenizedDataset

    fly = OnTheFlyDataset([action_json], tok_cfg(tiny_assets).recipe.with_tokenizer(tiny_assets.root), tiny_assets.root,
                          frame_cache=cache)
    same_sample(fly[3], PretokenizedDataset(tmp_path / "a")[3])
    assert fly.sources[0].tok.n_encoded == 0  # read from the cache
    (cache / "cache.json").write_text(json.dumps({"resolution": 512}))
    with pytest.raises(FileExistsError, match="frame cache of another VQ-GAN"):
        run_pretok([action_json], tmp_path / "a2", tiny_assets, frame_cache=cache)


def test_other_config_in_out_dir_is_refused(convs, tiny_assets, tmp_path):
    from worldvla.data.pretokenize import PretokenizeConfig, pretokenize

    _, action_json, _ = convs
    run_pretok([action_json], tmp_path / "t", tiny_assets, shard_size=2, overwrite=False)
    again = run_pretok([action_json], tmp_path / "t", tiny_assets, shard_size=2)  # complete: nothing to do
    assert again["n_samples"] == 6
    (tmp_path / "t" / "manifest.json").unlink()
    other = PretokenizeConfig(inputs=[action_json], out_dir=tmp_path / "t", shard_size=2,
                              tokenizer=tok_cfg(tiny_assets, action_stats="rynnvla_action"))
    with pytest.raises(FileExistsError, match="another configuration"):
        pretokenize(other)
    other.overwrite = True
    assert pretokenize(other)["tokenizer"]["action_stats"]["min"][3] == pytest.approx(-0.24214286)


def test_bad_records_name_file_and_trajectory(convs, tiny_assets, tmp_path):
    _, action_json, _ = convs
    records = json.loads(action_json.read_text())
    bad = json.loads(json.dumps(records))
    bad[4]["image"][1] = bad[4]["image"][1].replace("image_", "missing_")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps(bad))
    with pytest.raises(RecordError, match=r"bad\.json\[4\].*image file not found: .*missing_\d+\.png \(trajectory trj_1 "
                                          r"of task put_the_bowl_on_the_stove\)"):
        run_pretok([bad_json], tmp_path / "o1", tiny_assets)
    nan_action = tmp_path / "nan_action.npy"
    np.save(nan_action, np.array([0, 0, np.nan, 0, 0, 0, 1.0]))
    bad = json.loads(json.dumps(records))
    bad[2]["action"][1] = str(nan_action)
    bad_json.write_text(json.dumps(bad))
    with pytest.raises(RecordError, match=r"bad\.json\[2\]: action 1 \('.*nan_action\.npy'\).*NaN"):
        run_pretok([bad_json], tmp_path / "o2", tiny_assets)
    m = run_pretok([bad_json], tmp_path / "o3", tiny_assets, skip_errors=True)
    assert m["n_samples"] == 5 and [s["id"] for s in m["skipped"]] == [2]


def test_official_record_list_and_safe_unpickling(tmp_path):
    from worldvla.data.datasets import PretokenizedDataset
    from worldvla.data.official_records import UnsafePickleError

    tokens = [0, 16200, 8197, 8812, 8812, 5, 6, 8803, 8196, 8710, 10004] + [10100] * 7 + [15004, 8710]
    labels = [-100] * 10 + tokens[10:]
    files = tmp_path / "files"
    files.mkdir()
    with open(files / "0.pkl", "wb") as f:
        pickle.dump({"token": tokens, "label": labels, "id": 0}, f)
    record = tmp_path / "record.json"
    record.write_text(json.dumps([{"file": str(files / "0.pkl"), "len": len(tokens), "id": 0},
                                  {"token": tokens[:5], "label": [-100] * 5, "len": 5, "id": 1}]))
    ds = PretokenizedDataset(record)
    assert len(ds) == 2 and ds.lengths.tolist() == [len(tokens), 5]
    s = ds[0]
    assert s.input_ids == tokens and s.labels == labels
    assert [(sp.kind, sp.start, sp.end) for sp in s.spans] == [("image", 2, 9), ("action", 10, 19)]
    assert ds.kind(0) == "action"
    (tmp_path / "meta.yaml").write_text(f"META:\n  - path: {record}\n  - path: {record}\n")
    assert len(PretokenizedDataset(tmp_path / "meta.yaml")) == 4

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(files / "0.pkl", "wb") as f:
        pickle.dump({"token": Evil(), "label": [], "id": 0}, f)
    with pytest.raises(UnsafePickleError, match=r"0\.pkl: refusing to load .*system"):
        PretokenizedDataset(record)[0]


def test_concat_order_and_collate(convs, tiny_assets, tmp_path):
    from worldvla.data.collate import collate
    from worldvla.data.concat import ConcatConfig, concatenate
    from worldvla.data.datasets import PretokenizedDataset

    _, action_json, world_json = convs
    run_pretok([world_json], tmp_path / "w", tiny_assets, shard_size=4)
    run_pretok([action_json], tmp_path / "a", tiny_assets, shard_size=4)
    out = tmp_path / "concat" / "all.json"
    index = concatenate(ConcatConfig(inputs=[tmp_path / "w", tmp_path / "a"], output=out))
    assert index["sources"][0]["path"] == "../w" and index["n_samples"] == 12
    ds = PretokenizedDataset(out)
    assert [ds.kind(i) for i in range(12)] == ["world"] * 6 + ["action"] * 6
    same_sample(ds[6], PretokenizedDataset(tmp_path / "a")[0])
    blob = pickle.dumps(ds)  # spawned DataLoader workers get the dataset pickled: maps reopen, not copied
    assert len(blob) < 20_000
    same_sample(pickle.loads(blob)[7], ds[7])
    batch = collate([ds[0], ds[6]], max_len=1000)
    n_world, n_action = len(ds[0]), len(ds[6])
    assert n_action < 1000 < n_world
    assert batch.input_ids.shape == (2, 1000) and batch.lengths.tolist() == [1000, n_action]
    assert (batch.input_ids[1, n_action:] == 0).all() and (batch.labels[1, n_action:] == -100).all()
    assert batch.input_ids[1, :n_action].tolist() == ds[6].input_ids
    assert all(sp.end <= 1000 for sp in batch.spans[0]) and len(batch.spans[1]) == len(ds[6].spans)

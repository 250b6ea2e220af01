"""The Recipe (worldvla/recipe.py): worldvla.json, the manifest fingerprint and the mismatch diff in one object.

Files in the format the code before the Recipe wrote (a worldvla.json of export_checkpoint, a manifest's
`tokenizer` of pretokenize) must still load and be written back byte for byte; a mismatch between shards
and the training config keeps its one-line message.
"""

from __future__ import annotations

import json

import pytest

from worldvla.config import ConfigError
from worldvla.errors import InputFileError
from worldvla.recipe import Recipe, sha256_file
from worldvla.stats import RYNNVLA_ACTION_STATS, WORLDVLA_ACTION_STATS
from worldvla.train.config import DataOptions
from worldvla.train.data import check_tokenization

W = {"min": list(WORLDVLA_ACTION_STATS.min), "max": list(WORLDVLA_ACTION_STATS.max)}
R = {"min": list(RYNNVLA_ACTION_STATS.min), "max": list(RYNNVLA_ACTION_STATS.max)}


def _hashes(tiny_assets) -> dict:
    tok = tiny_assets.root / "tokenizer"
    return {n: sha256_file(tok / n) for n in ("text_tokenizer.json", "vqgan.yaml", "vqgan.ckpt")}


def _old_worldvla_json(tiny_assets) -> dict:
    """What train/modeling.export_checkpoint wrote before the Recipe, key for key and in its order."""
    h = _hashes(tiny_assets)
    return {"chunk_size": 10, "history": 2, "resolution": 64, "action_stats": R, "world_action_stats": W,
            "with_state": False, "with_wrist": True, "text_tokenizer_sha256": h["text_tokenizer.json"],
            "tokenizer_sha256": h, "step": 7}


def _atomic_bytes(obj, tmp_path) -> bytes:
    from worldvla.atomic import atomic_write_json

    atomic_write_json(tmp_path / "old.json", obj)
    return (tmp_path / "old.json").read_bytes()


def test_old_worldvla_json_loads_and_is_written_back_unchanged(tiny_assets, tmp_path):
    old = _atomic_bytes(_old_worldvla_json(tiny_assets), tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "worldvla.json").write_bytes(old)
    recipe = Recipe.from_file(tmp_path / "ckpt" / "worldvla.json")
    assert (recipe.chunk_size, recipe.resolution, recipe.with_wrist, recipe.step) == (10, 64, True, 7)
    recipe.verify_tokenizer(tiny_assets.root / "tokenizer", tmp_path / "ckpt" / "worldvla.json")
    out = recipe.save(tmp_path / "again")
    assert out.read_bytes() == old


def test_round_trip_from_presets(tiny_assets, tmp_path):
    recipe = Recipe(chunk_size=5, history=1, resolution=64, action_stats="rynnvla_action", with_state=True,
                    step=3, action_head={"num_heads": 2}).with_tokenizer(tiny_assets.root)
    back = Recipe.from_file(recipe.save(tmp_path))
    assert back.differing(recipe) == []  # presets equal their min/max written out
    assert back.action_stats == R and back.state_stats["min"][0] == pytest.approx(-0.4827807)
    assert back.action_head == {"num_heads": 2} and back.tokenizer_sha256 == _hashes(tiny_assets)
    assert back.to_json() == recipe.to_json()
    changed = back.replace(resolution=128)
    assert changed.differing(recipe) == ["resolution"]


def test_unknown_key_and_bad_value_name_the_file(tiny_assets, tmp_path):
    path = tmp_path / "worldvla.json"
    path.write_text(json.dumps({**_old_worldvla_json(tiny_assets), "chunk": 5}))
    with pytest.raises(InputFileError, match=r"worldvla.json: chunk: unknown key\(s\) \['chunk'\]"):
        Recipe.from_file(path)
    path.write_text(json.dumps({**_old_worldvla_json(tiny_assets), "history": 0}))
    with pytest.raises(InputFileError, match="worldvla.json: history: expected a positive integer, got 0"):
        Recipe.from_file(path)
    path.write_text(json.dumps({**_old_worldvla_json(tiny_assets), "action_stats": {"min": [1.0], "max": [0.0]}}))
    with pytest.raises(InputFileError, match="worldvla.json: action_stats: min"):
        Recipe.from_file(path)


def _old_fingerprint(tiny_assets, resolution=64, action=W, world=W) -> dict:
    """A pretokenize manifest's `tokenizer` as data/tokenization.tokenizer_fingerprint wrote it before."""
    from worldvla.stats import RYNNVLA_STATE_STATS as S

    h = _hashes(tiny_assets)
    return {"text_tokenizer.json_sha256": h["text_tokenizer.json"], "vqgan.yaml_sha256": h["vqgan.yaml"],
            "vqgan.ckpt_sha256": h["vqgan.ckpt"], "resolution": resolution, "action_stats": action,
            "world_action_stats": world, "state_stats": {"min": list(S.min), "max": list(S.max)}}


def test_fingerprint_is_the_manifest_format(tiny_assets):
    from worldvla.data.tokenization import TokenizerConfig, tokenizer_fingerprint

    recipe = Recipe(resolution=64).with_tokenizer(tiny_assets.root)
    assert recipe.fingerprint() == _old_fingerprint(tiny_assets)
    assert json.dumps(tokenizer_fingerprint(TokenizerConfig(path=tiny_assets.root, resolution=64))) == \
        json.dumps(_old_fingerprint(tiny_assets))  # same keys, same order
    back = Recipe.from_fingerprint(_old_fingerprint(tiny_assets, world=R))
    assert back.resolution == 64 and back.world_action_stats == R and back.tokenizer_sha256 == _hashes(tiny_assets)
    assert Recipe.from_fingerprint(_old_fingerprint(tiny_assets)).world_action_stats is None  # = action_stats
    with pytest.raises(ValueError, match="with_tokenizer"):
        Recipe().fingerprint()


def test_diff_explains_a_mismatch(tiny_assets):
    mine = Recipe(resolution=64, action_stats="worldvla")
    shards = Recipe.from_fingerprint(_old_fingerprint(tiny_assets, resolution=128, action=R, world=R))
    lines = mine.diff(shards, ["resolution", "action_stats", "world_action_stats", "state_stats"])
    assert lines == [
        "resolution: 64 vs 128",
        f"action_stats: 'worldvla' = {W} vs {R}",
        f"world_action_stats: 'worldvla' = {W} vs {R}",  # None on either side means its action_stats
    ]
    assert mine.diff(Recipe.from_fingerprint(_old_fingerprint(tiny_assets)), ["resolution", "action_stats"]) == []


def _manifest(tok: dict, kinds=None) -> dict:
    return {"tokenizer": tok, "config": {"out_dir": "data/shards_x"}, "kinds": kinds or {"action": 3, "world": 3}}


def test_shard_mismatch_messages_are_unchanged(tiny_assets):
    """The messages check_tokenization gave before the Recipe, for the same manifests and data sections."""
    cfg = DataOptions(tokenizer=tiny_assets.root, resolution=256)
    with pytest.raises(ConfigError) as err:
        check_tokenization([_manifest(_old_fingerprint(tiny_assets, resolution=64))], cfg)
    assert str(err.value) == ("data/shards_x was tokenised at 64 px but data.resolution=256; fix data.resolution "
                              "or point data.train at the matching shards")
    cfg = DataOptions(tokenizer=tiny_assets.root, resolution=64)
    with pytest.raises(ConfigError) as err:
        check_tokenization([_manifest(_old_fingerprint(tiny_assets, action=R, world=W))], cfg)
    assert str(err.value) == (f"data/shards_x was tokenised with action min/max {R} but data.action_stats='worldvla' "
                              f"is {W}")
    with pytest.raises(ConfigError) as err:
        check_tokenization([_manifest(_old_fingerprint(tiny_assets, world=R))], cfg)
    assert str(err.value) == (f"data/shards_x was tokenised with world action stats min/max {R} but "
                              f"data.world_action_stats (empty: data.action_stats)='worldvla' is {W}")
    # world statistics of shards without world samples are not compared; matching shards pass
    check_tokenization([_manifest(_old_fingerprint(tiny_assets, world=R), {"action": 3, "world": 0})], cfg)
    check_tokenization([_manifest(_old_fingerprint(tiny_assets))], cfg)
    cfg = DataOptions(tokenizer=tiny_assets.root, resolution=64, with_state=True, state_stats="rynnvla_action")
    with pytest.raises(ConfigError, match="tokenised with state stats min/max .* but data.state_stats="
                                          "'rynnvla_action' is"):
        check_tokenization([_manifest(_old_fingerprint(tiny_assets))], cfg)


def test_official_table_gives_a_recipe():
    from worldvla.policy.official_checkpoints import find_official

    entry = find_official("Alibaba-DAMO-Academy/WorldVLA/model_256/libero_10")
    recipe = entry.recipe()
    assert isinstance(recipe, Recipe) and (recipe.chunk_size, recipe.resolution) == (10, 256)
    assert recipe.extra["official_checkpoint"] == entry.hub_id


def test_sample_kind_travels_with_the_batch(text_tokenizer):
    """Decided once where the sample is made, kept by collate, read by the loss and the action head."""
    import torch

    from worldvla.data.collate import collate
    from worldvla.data.sequence import Sample
    from worldvla.model.action_head import selectable_rows
    from worldvla.train.loss import LossConfig, compute_loss
    from worldvla.vocab import ACTION_START_ID, BOI_ID, IGNORE_INDEX

    with pytest.raises(ValueError, match="sample kind 'state'"):
        Sample([0], [IGNORE_INDEX], [], "state")
    assert Sample([0, BOI_ID], [IGNORE_INDEX, BOI_ID]).kind == "world"  # bare ids: an image among the targets
    a = ACTION_START_ID
    action = Sample([0, a, 5, a, 6], [IGNORE_INDEX, a, 5, a, 6], [], "action")
    world = Sample([0, a, 5, a, 6], [IGNORE_INDEX, a, 5, a, 6], [], "world")  # two actions in the prompt
    batch = collate([action, world])
    assert batch.kinds == ["action", "world"] and batch.world_rows().tolist() == [False, True]
    assert selectable_rows(batch.input_ids).tolist() == [True, True]  # the token rule alone takes both
    assert selectable_rows(batch.input_ids, batch.world_rows()).tolist() == [True, False]
    logits = torch.randn(2, batch.input_ids.shape[1], 16)
    labels = batch.labels.clamp(max=15).where(batch.labels < 0, batch.labels % 16)
    out = compute_loss(logits, labels, LossConfig(form="paper"), batch.world_rows())
    assert out.n_action == 4 and out.n_world == 4  # by the stored kinds, not by the labels
    assert compute_loss(logits, labels, LossConfig(form="paper")).n_world == 0

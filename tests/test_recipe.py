"""The Recipe (worldvla/recipe.py): worldvla.json, the manifest fingerprint and the mismatch diff in one object.

Files in the format the code before the Recipe wrote (a worldvla.json of export_checkpoint, a manifest's
`tokenizer` of pretokenize) must still load and be written back byte for byte; a mismatch between shards
and the training config keeps its one-line message.
"""

from __future__ import annotations

import json
import warnings

import pytest

from worldvla.config import ConfigError
from worldvla.errors import InputFileError
from worldvla.recipe import Recipe, sha256_file
from worldvla.stats import RYNNVLA_ACTION_STATS, WORLDVLA_ACTION_STATS
from worldvla.train.config import DataOptions
from worldvla.train.data import check_shards

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
    from worldvla.data.pretokenize import TokenizerOptions

    recipe = Recipe(resolution=64).with_tokenizer(tiny_assets.root)
    assert recipe.fingerprint() == _old_fingerprint(tiny_assets)
    opts = TokenizerOptions(path=tiny_assets.root, recipe=Recipe(resolution=64))
    assert json.dumps(opts.recipe.with_tokenizer(opts.path).fingerprint()) == \
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
    """The messages the field-by-field check gave before the Recipe, for the same manifests and data sections
    (now check_shards: the data section's Recipe against each manifest's, by Recipe.diff)."""
    cfg = DataOptions(tokenizer=tiny_assets.root, recipe=Recipe(resolution=256))
    with pytest.raises(ConfigError) as err:
        check_shards([_manifest(_old_fingerprint(tiny_assets, resolution=64))], cfg.recipe)
    assert str(err.value) == ("data/shards_x was tokenised at 64 px but data.recipe.resolution=256; fix data.recipe.resolution "
                              "or point data.train at the matching shards")
    cfg = DataOptions(tokenizer=tiny_assets.root, recipe=Recipe(resolution=64))
    with pytest.raises(ConfigError) as err:
        check_shards([_manifest(_old_fingerprint(tiny_assets, action=R, world=W))], cfg.recipe)
    assert str(err.value) == (f"data/shards_x was tokenised with action min/max {R} but data.recipe.action_stats='worldvla' "
                              f"is {W}")
    with pytest.raises(ConfigError) as err:
        check_shards([_manifest(_old_fingerprint(tiny_assets, world=R))], cfg.recipe)
    assert str(err.value) == (f"data/shards_x was tokenised with world action stats min/max {R} but "
                              f"data.recipe.world_action_stats (null: data.recipe.action_stats)='worldvla' is {W}")
    # world statistics of shards without world samples are not compared; matching shards pass
    check_shards([_manifest(_old_fingerprint(tiny_assets, world=R), {"action": 3, "world": 0})], cfg.recipe)
    check_shards([_manifest(_old_fingerprint(tiny_assets))], cfg.recipe)
    cfg = DataOptions(tokenizer=tiny_assets.root, recipe=Recipe(resolution=64, with_state=True,
                                                                     state_stats="rynnvla_action"))
    with pytest.raises(ConfigError, match="tokenised with state stats min/max .* but data.recipe.state_stats="
                                          "'rynnvla_action' is"):
        check_shards([_manifest(_old_fingerprint(tiny_assets))], cfg.recipe)


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


# -- one Recipe through conversations, pretokenize, the training set and the checkpoint ------------------------
K = 10  # libero_10's chunk: not the default 5, so a stage that ignores the recipe shows


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_assets):
    """Conversations and shards made from one Recipe (K = 10, RynnVLA-002 action statistics, 64 px)."""
    from worldvla.data.conversations import ConversationsConfig, generate
    from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions, pretokenize
    from worldvla.train.tiny_data import write_trajectories

    root = tmp_path_factory.mktemp("recipe_pipeline")
    recipe = Recipe(chunk_size=K, history=2, resolution=64, action_stats="rynnvla_action")
    write_trajectories(root / "export", n_tasks=1, n_traj=2, n_frames=K + 2, resolution=64)
    files = generate(ConversationsConfig(recipe=recipe, base_dir=root / "export", output_dir=root / "convs",
                                         task_name="t", train_ratio=1.0))
    manifest = pretokenize(PretokenizeConfig(inputs=[files["train"]["action"], files["train"]["world"]],
                                             out_dir=root / "tokens",
                                             tokenizer=TokenizerOptions(path=tiny_assets.root, recipe=recipe)))
    return recipe, files["train"], root / "tokens", manifest


def test_conversations_take_k_history_and_views_from_the_recipe(pipeline):
    recipe, files, _, _ = pipeline
    records = json.loads(files["action"].read_text())
    assert len(records) == 2 * 3  # (K + 2) - K + 1 windows per trajectory
    assert {len(r["action"]) for r in records} == {K}
    assert {r["conversations"][1]["value"].count("<|action|>") for r in records} == {K}
    assert max(len(r["image"]) for r in records) == recipe.history and "state" not in records[0]
    assert files["action"].name == f"libero_t_his_2_train_img_only_ck_{K}_64.json"  # the official name carries K


def test_conversations_config_holds_a_recipe_and_reads_its_official_cli_names():
    from worldvla.config import load_config
    from worldvla.data.conversations import ConversationsConfig

    recipe = Recipe(chunk_size=10, history=3, resolution=512, with_state=True, with_wrist=True)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        cfg = load_config(ConversationsConfig, None, ["task_name=10", "len_action=10", "his=3", "resolution=512",
                                                      "with_state=true", "with_wrist=true"])
    assert "override len_action: `len_action` is deprecated, write `recipe.chunk_size`" in map(str, (
        n.message for n in notes)) and len(notes) == 5
    assert cfg == ConversationsConfig(recipe=recipe, task_name="10")
    assert cfg.recipe.differing(recipe, ["chunk_size", "history", "resolution", "with_state", "with_wrist"]) == []


def test_manifest_fingerprint_is_the_training_recipes(pipeline, tiny_assets):
    """The shards record Recipe.fingerprint of the recipe they were made with, and that is the fingerprint of
    the training config's Recipe (data.recipe) when the config says the same; the training set accepts them."""
    from worldvla.train.data import TrainSet

    recipe, _, shards, manifest = pipeline
    data = DataOptions(train=[shards], tokenizer=tiny_assets.root,
                       recipe=Recipe(resolution=64, chunk_size=K, action_stats="rynnvla_action"))
    assert manifest["tokenizer"] == recipe.with_tokenizer(tiny_assets.root).fingerprint()
    assert manifest["tokenizer"] == data.recipe.with_tokenizer(tiny_assets.root).fingerprint()
    assert Recipe.from_fingerprint(manifest["tokenizer"]).differing(recipe, ["resolution", "action_stats"]) == []
    dataset = TrainSet([shards], ["action", "world"], 4096, data=data)
    check_shards(dataset.manifests(), data.recipe)  # agrees: no error
    action = next(dataset[i] for i in range(len(dataset)) if dataset.parts[0].kind(i) == "action")
    assert len(action.spans_of("action")) == K


def test_shards_of_another_recipe_are_refused_naming_the_field(pipeline, tiny_assets):
    from worldvla.train.data import TrainSet

    _, _, shards, _ = pipeline
    dataset = TrainSet([shards], ["action", "world"], 4096)
    base = {"chunk_size": K, "action_stats": "rynnvla_action"}
    with pytest.raises(ConfigError, match=f"^{shards} was tokenised at 64 px but data.recipe.resolution=128; "):
        check_shards(dataset.manifests(), Recipe(**base, resolution=128))
    with pytest.raises(ConfigError, match=fr"^{shards} was tokenised with action min/max .* but "
                                          r"data.recipe.action_stats='worldvla' is"):
        check_shards(dataset.manifests(), Recipe(**{**base, "action_stats": "worldvla"}, resolution=64))
    # the world samples were binned with the action statistics too: naming others for them is refused
    with pytest.raises(ConfigError, match=r"tokenised with world action stats min/max .* but "
                                          r"data.recipe.world_action_stats='worldvla' is"):
        check_shards(dataset.manifests(), Recipe(**base, resolution=64, world_action_stats="worldvla"))


def test_on_the_fly_set_tokenises_with_the_recipe_and_checks_its_tokenizer_files(pipeline, tiny_assets):
    from worldvla.data.datasets import OnTheFlyDataset, PretokenizedDataset

    recipe, files, shards, _ = pipeline
    fly = OnTheFlyDataset([files["action"], files["world"]], recipe, tiny_assets.root)
    pre = PretokenizedDataset(shards)
    assert len(fly) == len(pre)
    for i in (0, len(pre) - 1):  # an action and a world sample
        assert fly[i].input_ids == pre[i].input_ids and fly[i].labels == pre[i].labels
    other = recipe.replace(tokenizer_sha256={**_hashes(tiny_assets), "vqgan.ckpt": "0" * 64})
    with pytest.raises(ValueError, match=r"tokenizer files differ from the ones the recipe records "
                                         r"\(tokenizer_sha256.vqgan.ckpt: 000000000000 vs "):
        OnTheFlyDataset([files["action"]], other, tiny_assets.root)
    wrong = OnTheFlyDataset([files["action"]], recipe.replace(action_stats="worldvla"), tiny_assets.root)
    assert wrong[0].input_ids != pre[0].input_ids  # the recipe's statistics, not a default, bin the actions


def test_checkpoint_export_writes_the_runs_recipe_and_from_pretrained_reads_it(tiny_assets, tmp_path):
    """export_checkpoint saves the run's Recipe (Recipe.save) with the step, the head and the copies' hashes
    (by default the data section's, data.recipe); WorldVLAPolicy.from_pretrained runs with that recipe."""
    from worldvla.policy.policy import WorldVLAPolicy
    from worldvla.testing.tiny_model import make_tiny_model
    from worldvla.train.config import TrainConfig
    from worldvla.train.modeling import export_checkpoint

    cfg = TrainConfig()
    cfg.data.tokenizer, cfg.data.recipe.chunk_size, cfg.data.recipe.resolution = tiny_assets.root, K, 64
    model = make_tiny_model(0)
    run_recipe = Recipe(chunk_size=K, history=1, resolution=64, action_stats="rynnvla_action", with_wrist=True)
    for folder, recipe in ((tmp_path / "given", run_recipe), (tmp_path / "default", None)):
        folder.mkdir()
        export_checkpoint(model.state_dict(), folder, model.cfg, cfg, step=3, recipe=recipe)
    back = Recipe.from_file(tmp_path / "given" / "worldvla.json")
    assert back.differing(run_recipe, ["chunk_size", "history", "resolution", "action_stats", "with_wrist"]) == []
    assert (back.step, back.tokenizer_sha256) == (3, _hashes(tiny_assets))
    default = Recipe.from_file(tmp_path / "default" / "worldvla.json")
    assert default.differing(cfg.data.recipe.with_tokenizer(tiny_assets.root).replace(step=3)) == []
    policy = WorldVLAPolicy.from_pretrained(tmp_path / "given")
    assert policy.settings.differing(back) == [] and policy.chunk_size == K

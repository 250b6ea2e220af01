"""An official-release checkpoint folder (config.json + shards, no worldvla.json, no tokenizer/) is
evaluated with the settings of the released checkpoint it is (the table of
worldvla.policy.official_checkpoints) or with the ones given on the eval / serve command line, never with
silently assumed ones (a libero_10 model run at K=5 would just score lower): an unknown folder without
them is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from worldvla.config import ConfigError, parse_cli
from worldvla.eval.config import EvalConfig
from worldvla.policy.interface import PolicySource, load_policy
from worldvla.serve.server import ServeConfig
from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint
from worldvla.tokenizers import load_stats


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory, tiny_assets):
    root = tmp_path_factory.mktemp("official")
    ckpt = write_tiny_checkpoint(root / "ckpt", tiny_assets, chunk_size=5, resolution=256)
    (ckpt / "worldvla.json").unlink()
    shutil.move(str(ckpt / "tokenizer"), str(root / "lumina_tokenizer"))  # shipped separately, as officially
    return ckpt, root / "lumina_tokenizer"


def test_settings_and_tokenizer_from_the_command_line(official_layout):
    ckpt, tok = official_layout
    cfg = parse_cli(EvalConfig, [f"policy={ckpt}", f"policy.tokenizer={tok}",
                                 "policy.recipe={chunk_size: 10, resolution: 256, action_stats: worldvla}",
                                 "decode.mode=parallel"])  # K constrained blocks (auto: official for this folder)
    with one_torch_thread():
        policy = load_policy(cfg.policy, cfg.device, decode=cfg.decode.mode)
        frame = np.zeros((256, 256, 3), np.uint8)
        actions = policy.predict("pick up the bowl", [frame, frame])
    assert policy.chunk_size == 10 and actions.shape == (10, 7)


def test_unknown_official_folder_without_settings_is_refused(official_layout):
    """No warning-and-guess: an unlisted folder without worldvla.json needs the fields that differ
    between released setups, and the error names the ones missing."""
    ckpt, tok = official_layout
    with pytest.raises(ValueError, match=r"chunk_size, resolution, action_stats.*policy.recipe"):
        load_policy(PolicySource(str(ckpt), tokenizer=str(tok)))
    with pytest.raises(ValueError, match=r"Pass resolution, action_stats \("):
        load_policy(PolicySource(str(ckpt), tokenizer=str(tok), recipe={"chunk_size": 10}))


def test_missing_tokenizer_names_the_folder_and_the_fix(official_layout):
    ckpt, _ = official_layout
    with pytest.raises(FileNotFoundError, match=r"tokenizer=<dir>"):
        load_policy(str(ckpt))


def test_settings_are_refused_for_non_checkpoints(official_layout):
    with pytest.raises(ValueError, match="checkpoint directory"):
        load_policy(PolicySource("ws://127.0.0.1:1", recipe={"chunk_size": 10}))


def test_unknown_setting_is_an_error(official_layout):
    ckpt, tok = official_layout
    with pytest.raises(ConfigError, match=r"policy.recipe: unknown key\(s\) \['chunk_sise'\] for Recipe"):
        load_policy(PolicySource(str(ckpt), tokenizer=str(tok), recipe={"chunk_sise": 10}))


def test_serve_accepts_the_same_fields(official_layout):
    ckpt, tok = official_layout
    cfg = parse_cli(ServeConfig, [f"policy={ckpt}", f"policy.tokenizer={tok}", "policy.recipe={resolution: 512}"])
    assert cfg.policy == PolicySource(str(ckpt), str(tok), {"resolution": 512})


# --- the table of released checkpoints -------------------------------------------------------------

EXPECTED = {  # hub id -> (K, resolution, action stats, wrist, state, family, action mode); from the READMEs/scripts
    **{f"Alibaba-DAMO-Academy/WorldVLA/model_{r}/{s}": (k, r, "worldvla", False, False, "worldvla", "discrete")
       for r in (256, 512) for s, k in (("libero_spatial", 5), ("libero_object", 5), ("libero_goal", 5),
                                        ("libero_10", 10))},
    **{f"jcenaa/WorldVLA-ActionModel-LIBERO-{n}-{r}": (k, r, "worldvla", False, False, "worldvla", "discrete")
       for r in (256, 512) for n, k in (("Spatial", 5), ("Object", 5), ("Goal", 5), ("10", 10))},
    **{f"Alibaba-DAMO-Academy/RynnVLA-002/VLA_model_256/{s}": (k, 256, "rynnvla_action", True, True, "rynnvla002",
                                                               "continuous")
       for s, k in (("libero_spatial", 10), ("libero_object", 5), ("libero_goal", 5), ("libero_10", 10))},
    **{f"Alibaba-DAMO-Academy/RynnVLA-002/{kind}/{s}": (1, 512, "worldvla", True, False, "rynnvla002", "discrete")
       for kind in ("World_model_512", "Action_World_model_512")
       for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10")},
}


def _summary(entry):
    s = entry.settings
    return (s["chunk_size"], s["resolution"], s["action_stats"], s["with_wrist"], s["with_state"], s["family"],
            s["action_mode"])


def test_every_released_checkpoint_resolves_by_hub_id_folder_and_cache_path(tmp_path):
    from worldvla.policy.official_checkpoints import OFFICIAL_CHECKPOINTS, find_official
    from worldvla.recipe import Recipe

    assert {c.hub_id for c in OFFICIAL_CHECKPOINTS} == set(EXPECTED)
    sha = "0123456789abcdef0123456789abcdef01234567"
    for hub_id, want in EXPECTED.items():
        entry = find_official(hub_id)
        assert entry is not None and entry.hub_id == hub_id and _summary(entry) == want, hub_id
        Recipe(**entry.settings)  # every field is a real setting
        owner, name, *sub = hub_id.split("/")
        local = tmp_path / "ckpts" / name.lower() / Path(*sub) if sub else tmp_path / "ckpts" / name
        cache = tmp_path / "hub" / f"models--{owner}--{name}" / "snapshots" / sha / Path(*sub)
        for where in (local, cache, f"{hub_id}/"):
            assert find_official(where) is entry, (hub_id, where)
    assert find_official(tmp_path / "outputs" / "libero_10") is None  # a suite name alone is not enough
    assert find_official(tmp_path / "model_256" / "libero_90") is None
    assert find_official(tmp_path / "hub" / "models--someone--WorldVLA" / "snapshots" / sha / "model_256"
                         / "libero_10") is None  # another owner's repo is not the release


@pytest.fixture(scope="module")
def released_layout(official_layout, tmp_path_factory):
    """The tiny official-layout weights under the folder names of a released download."""
    ckpt, tok = official_layout
    root = tmp_path_factory.mktemp("released")
    local = root / "ckpts" / "worldvla" / "model_256" / "libero_10"
    shutil.copytree(ckpt, local)
    return local, tok


def test_released_folder_gets_its_settings_from_the_table(released_layout):
    local, tok = released_layout
    with one_torch_thread():
        policy = load_policy(PolicySource(str(local), tokenizer=str(tok)))  # no recipe given: libero_10 is K = 10
        assert (policy.chunk_size, policy.history, policy.resolution, policy.settings.family) == (10, 2, 256, "worldvla")
        assert policy.settings.extra["official_checkpoint"] == "Alibaba-DAMO-Academy/WorldVLA/model_256/libero_10"
        assert policy.action_tok.stats == load_stats("worldvla")
        explicit = load_policy(PolicySource(str(local), str(tok), {"chunk_size": 3}))  # explicit values win
        assert explicit.chunk_size == 3 and explicit.resolution == 256
        shutil.copytree(tok, local.parents[1] / "chameleon" / "tokenizer")  # a full download of the hub repo
        assert load_policy(str(local)).chunk_size == 10  # finds ckpts/worldvla/chameleon/tokenizer itself


def test_hub_id_arrives_through_the_cache_and_gets_the_table(released_layout, tmp_path, monkeypatch):
    """`policy=owner/name/sub` goes through resolve_source (huggingface_hub's real snapshot_download,
    offline, from a populated cache) and the downloaded folder is recognised as the release."""
    import huggingface_hub.constants as hub_constants

    local, tok = released_layout
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--Alibaba-DAMO-Academy--WorldVLA"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(local, repo / "snapshots" / sha / "model_512" / "libero_goal")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with one_torch_thread():
        policy = load_policy(PolicySource("Alibaba-DAMO-Academy/WorldVLA/model_512/libero_goal", tokenizer=str(tok)))
    assert (policy.chunk_size, policy.resolution) == (5, 512)
    assert policy.settings.extra["official_checkpoint"] == "Alibaba-DAMO-Academy/WorldVLA/model_512/libero_goal"


def test_unknown_family_is_an_error(official_layout):
    ckpt, tok = official_layout
    with pytest.raises(ValueError, match="family: 'openvla' not one of"):
        load_policy(PolicySource(str(ckpt), str(tok), {"chunk_size": 5, "resolution": 256, "action_stats": "worldvla",
                                                       "family": "openvla"}))


def test_released_rynnvla002_folder_runs_with_wrist_state_and_head(tiny_assets, tmp_path):
    """VLA_model_256/libero_goal: K = 5, third + wrist, state, RynnVLA-002 statistics, the action head."""
    from worldvla.testing.tiny_rynnvla import write_tiny_rynnvla_checkpoint

    folder = tmp_path / "rynnvla002" / "VLA_model_256" / "libero_goal"
    write_tiny_rynnvla_checkpoint(folder, tiny_assets, chunk_size=5, resolution=256)
    (folder / "worldvla.json").unlink()
    shutil.move(str(folder / "tokenizer"), str(tmp_path / "tok"))
    with one_torch_thread():
        policy = load_policy(PolicySource(str(folder), tokenizer=str(tmp_path / "tok")))
        assert (policy.uses_wrist, policy.uses_state, policy.action_mode, policy.settings.family) == \
            (True, True, "continuous", "rynnvla002")
        assert policy.action_tok.stats == load_stats("rynnvla_action")
        frame = np.zeros((256, 256, 3), np.uint8)
        actions = policy.predict("put the bowl on the stove", [frame, frame], wrist=[frame, frame], state=np.zeros(8))
        assert actions.shape == (5, 7)
        with pytest.raises(ValueError, match="needs a wrist image"):
            policy.predict("put the bowl on the stove", [frame, frame], state=np.zeros(8))

"""An official-release checkpoint folder (config.json + shards, no worldvla.json, no tokenizer/) is
evaluated with the tokenizer and the settings given on the eval / serve command line, never with
silently assumed ones (a libero_10 model run at K=5 would just score lower)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from worldvla.config import parse_cli
from worldvla.eval.config import EvalConfig
from worldvla.eval.interface import load_policy
from worldvla.serve.server import ServeConfig
from worldvla.testing.tiny_model import one_torch_thread, write_tiny_checkpoint


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory, tiny_assets):
    root = tmp_path_factory.mktemp("official")
    ckpt = write_tiny_checkpoint(root / "ckpt", tiny_assets, chunk_size=5, resolution=256)
    (ckpt / "worldvla.json").unlink()
    shutil.move(str(ckpt / "tokenizer"), str(root / "lumina_tokenizer"))  # shipped separately, as officially
    return ckpt, root / "lumina_tokenizer"


def test_settings_and_tokenizer_from_the_command_line(official_layout, caplog):
    ckpt, tok = official_layout
    cfg = parse_cli(EvalConfig, [f"policy={ckpt}", f"tokenizer={tok}", "policy_settings={chunk_size: 10}",
                                 "decode.mode=parallel"])  # K constrained blocks (auto: official for this folder)
    with one_torch_thread(), caplog.at_level(logging.WARNING):
        policy = load_policy(cfg.policy, cfg.device, cfg.action_mode, cfg.tokenizer, cfg.policy_settings,
                             decode=cfg.decode.mode)
        frame = np.zeros((256, 256, 3), np.uint8)
        actions = policy.predict("pick up the bowl", [frame, frame])
    assert policy.chunk_size == 10 and actions.shape == (10, 7)
    assert "has no worldvla.json" in caplog.text  # assumed values are announced, not silent


def test_missing_tokenizer_names_the_folder_and_the_fix(official_layout):
    ckpt, _ = official_layout
    with pytest.raises(FileNotFoundError, match=r"tokenizer=<dir>"):
        load_policy(str(ckpt))


def test_settings_are_refused_for_non_checkpoints(official_layout):
    with pytest.raises(ValueError, match="checkpoint directory"):
        load_policy("ws://127.0.0.1:1", settings={"chunk_size": 10})


def test_unknown_setting_is_an_error(official_layout):
    ckpt, tok = official_layout
    with pytest.raises(TypeError, match="chunk_sise"):
        load_policy(str(ckpt), tokenizer=str(tok), settings={"chunk_sise": 10})


def test_serve_accepts_the_same_fields(official_layout):
    ckpt, tok = official_layout
    cfg = parse_cli(ServeConfig, [f"policy={ckpt}", f"tokenizer={tok}", "policy_settings={resolution: 512}"])
    assert cfg.tokenizer == str(tok) and cfg.policy_settings == {"resolution": 512}

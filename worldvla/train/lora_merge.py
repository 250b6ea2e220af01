"""Merge a LoRA run's adapter-only step checkpoint into a self-contained inference checkpoint, on request
(the run itself merges its last step, or every step with train.lora.merge=every_save).

    worldvla lora-merge outputs/run/checkpoints/step_00005000 [out=outputs/run/merged_5000]

The base is rebuilt from the run's `model.init_from` (train_config.yaml) and must have the sha256 that the
checkpoint's lora.json records; the result (default `<checkpoint>_merged`, beside it: resume never reads it)
is what the run would have written at that step: weights W + alpha / rank x B A, worldvla.json with "lora".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from worldvla.config import ConfigError, load_config, parse_cli, save_config
from worldvla.errors import exit_on_input_errors
from worldvla.model.convert import clean_key
from worldvla.train import lora, modeling
from worldvla.train.config import TrainConfig

log = logging.getLogger("worldvla.train")


@dataclass
class MergeConfig:
    checkpoint: Path = Path()  # a LoRA run's step folder (lora.json, lora_adapters.safetensors, train_config.yaml)
    out: Path | None = None  # default: <checkpoint>_merged


def merge_checkpoint(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Write the merged checkpoint of `checkpoint` to `out`; returns `out`."""
    ckpt = Path(checkpoint)
    for name in (lora.SETTINGS_FILE, lora.ADAPTERS_FILE, "train_config.yaml"):
        if not (ckpt / name).is_file():
            raise ConfigError(f"checkpoint: {ckpt / name} missing; not a LoRA run's step folder")
    cfg = load_config(TrainConfig, ckpt / "train_config.yaml")
    if not lora.enabled(cfg):
        raise ConfigError(f"checkpoint: {ckpt / 'train_config.yaml'} has train.lora.rank=0 (not a LoRA run)")
    base = lora.base_info(cfg)
    lora.check_base(ckpt, base)
    torch.manual_seed(cfg.train.seed)  # a random-init base (tests) is rebuilt as the run built it
    model, model_cfg = modeling.build_model(cfg)
    trained = load_file(ckpt / lora.ADAPTERS_FILE)
    res = model.load_state_dict(trained, strict=False)
    absent = [k for k in res.missing_keys if lora.is_trainable_key(k)]
    if res.unexpected_keys or absent:
        raise ConfigError(f"checkpoint: {ckpt / lora.ADAPTERS_FILE} does not fit the model of train_config.yaml "
                          f"(unexpected {res.unexpected_keys[:3]}, missing {absent[:3]})")
    step = json.loads((ckpt / lora.SETTINGS_FILE).read_text()).get("step")
    dst = Path(out) if out else ckpt.with_name(ckpt.name + "_merged")
    dst.mkdir(parents=True, exist_ok=True)
    state = {clean_key(k): v for k, v in model.state_dict().items()}
    modeling.export_lora(state, dst, model_cfg, cfg, step, modeling.head_settings(model), cfg.data.recipe,
                         base, merged=True)
    save_config(cfg, dst / "train_config.yaml")
    log.info("merged %s -> %s", ckpt, dst)
    return dst


def main(argv=None) -> int:
    return exit_on_input_errors(_main)(argv)


def _main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    cfg = parse_cli(MergeConfig, argv, description=__doc__, positional="checkpoint")
    print(merge_checkpoint(cfg.checkpoint, cfg.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

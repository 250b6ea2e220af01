"""LoRA fine-tuning (`train.lora.rank > 0`): peft adapters on the decoder layers' linears, the base frozen.

- apply: inject the adapters (peft), freeze everything else but a continuous action head (small: trained whole),
  frozen weights in `base_dtype` (bf16 on a GPU: half the memory), trainable ones in fp32;
- settings: what worldvla.json / lora.json record: rank, alpha, dropout, targets and the base (init_from and the
  sha256 of its weight files), so a merged checkpoint names the weights it was trained from;
- merge: the inference state dict W + (alpha / rank) B A under the official names, for export_checkpoint;
- write_adapters: the step checkpoints' small file (adapters + head), beside the resumable train_state/.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from worldvla.atomic import atomic_write_json
from worldvla.config import ConfigError
from worldvla.model.loading import CONFIG_NAME, resolve_source, weight_files
from worldvla.recipe import sha256_file

log = logging.getLogger("worldvla.train")

ADAPTER_NAME = "default"  # peft's adapter name: keys `<linear>.lora_A.default.weight`
ADAPTERS_FILE = "lora_adapters.safetensors"
SETTINGS_FILE = "lora.json"
_LORA_KEY = re.compile(rf"^(.*)\.(lora_A|lora_B)\.{ADAPTER_NAME}\.weight$")
_BASE_PART = ".base_layer"


def enabled(cfg) -> bool:
    return cfg.train.lora.rank > 0


def scaling(opts) -> float:
    return (opts.alpha or opts.rank) / opts.rank


def base_dtype(cfg) -> torch.dtype:
    """The frozen weights' dtype: bf16 on a GPU with bf16 training, else fp32 (CPU autocast is not the recipe)."""
    return torch.bfloat16 if cfg.train.precision == "bf16" and torch.cuda.is_available() else torch.float32


def target_pattern(targets: list[str]) -> str:
    """Only the decoder layers' projections: an action head's own linears are trained whole, not adapted."""
    return rf"^model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(map(re.escape, targets))})$"


def apply(model: torch.nn.Module, opts, dtype: torch.dtype) -> torch.nn.Module:
    """Inject the adapters into `model` in place and set what trains; returns `model`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("train.lora.rank > 0 needs peft: pip install 'worldvla[lora]'") from None
    config = LoraConfig(r=opts.rank, lora_alpha=opts.alpha or opts.rank, lora_dropout=opts.dropout,
                        target_modules=target_pattern(opts.target_modules), bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    head = getattr(model, "action_head", None)
    for name, p in model.named_parameters():
        train = ".lora_" in name or (head is not None and name.startswith("action_head."))
        p.requires_grad_(train)
        p.data = p.data.to(torch.float32 if train else dtype)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("LoRA rank %d alpha %g on %s: %d trainable of %d parameters (%.2f %%), base in %s", opts.rank,
             opts.alpha or opts.rank, ",".join(opts.target_modules), n_train, n_all, 100 * n_train / n_all, dtype)
    return model


# -- what the checkpoints record ----------------------------------------------------------------
def base_info(cfg) -> dict:
    """The starting weights: `model.init_from` and the sha256 of its config.json and weight files
    (memoised per process: a 7B folder is hashed once); a random init names the preset and seed."""
    m = cfg.model
    if not m.init_from:
        return {"init_from": "", "preset": m.preset, "seed": cfg.train.seed}
    folder = resolve_source(m.init_from)
    files = [folder / CONFIG_NAME, *weight_files(folder)]
    return {"init_from": str(m.init_from), "sha256": {f.name: sha256_file(f) for f in files}}


def settings(opts, base: dict, merged: bool) -> dict:
    """worldvla.json `lora` / lora.json: how the adapters were made and from which base."""
    return {"rank": opts.rank, "alpha": opts.alpha or opts.rank, "dropout": opts.dropout,
            "target_modules": list(opts.target_modules), "merged": merged, "base": base}


def check_base(checkpoint: Path, base: dict) -> None:
    """Resuming adapters on other base weights would silently train a different model: refuse."""
    f = Path(checkpoint) / SETTINGS_FILE
    if not f.is_file():
        raise ConfigError(f"{f}: missing; {checkpoint} was not saved by a LoRA run (train.lora.rank > 0)")
    saved = json.loads(f.read_text()).get("base", {})
    key = "sha256" if "sha256" in saved and "sha256" in base else None  # the same files moved elsewhere still match
    if (saved.get(key) != base.get(key)) if key else saved != base:
        raise ConfigError(f"model.init_from: the base differs from the one {f} was trained on "
                          f"({saved.get('init_from')!r}, sha256 {saved.get('sha256')}); resume with that base")


# -- state dicts --------------------------------------------------------------------------------
def is_trainable_key(key: str) -> bool:
    return ".lora_" in key or key.startswith("action_head.")


def merge(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Adapter state dict (peft names) -> plain one: W = W_base + scale * B @ A, in fp32, official names."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = _LORA_KEY.match(k)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = v
        else:
            out[k.replace(_BASE_PART + ".", ".")] = v
    for prefix, ab in pairs.items():
        key = prefix + ".weight"
        if key not in out or set(ab) != {"lora_A", "lora_B"}:
            raise KeyError(f"{prefix}: adapter without its base weight or without lora_A / lora_B")
        w = out[key]
        out[key] = w.float() + scale * (ab["lora_B"].float() @ ab["lora_A"].float())  # export casts to save_dtype
    return out


def write_adapters(state: dict[str, torch.Tensor], folder: Path, info: dict) -> None:
    """The adapters (and head) in fp32 + lora.json into a step folder (main process)."""
    small = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items() if is_trainable_key(k)}
    save_file(small, str(folder / ADAPTERS_FILE), metadata={"format": "pt"})
    atomic_write_json(folder / SETTINGS_FILE, info)

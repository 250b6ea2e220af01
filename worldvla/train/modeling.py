"""The trainer's only contact with the model package: build, mask, loss, export (docs/interfaces.md).

Everything model-specific the loop needs goes through these functions, so the loop itself knows
nothing of Chameleon's layout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import torch

from worldvla.config import ConfigError
from worldvla.model.action_head import ActionHead
from worldvla.model.config import ModelConfig
from worldvla.model.layout import ActionLayout
from worldvla.model.loading import load_checkpoint, save_state_dict
from worldvla.model.masks import batch_mask, to_additive
from worldvla.model.transformer import Transformer
from worldvla.recipe import Recipe, tokenizer_files
from worldvla.train import lora
from worldvla.train.continuous import WithActionHead, head_config, head_l1, load_head_weights
from worldvla.train.loss import LossConfig, predicting_positions
from worldvla.train.loss import compute_loss as loss_fn

log = logging.getLogger("worldvla.train")


# -- build --------------------------------------------------------------------------------------
def build_model(cfg):
    """(fp32 model, its ModelConfig): `model.preset` (+ overrides) at random init, or `model.init_from` weights;
    with `model.action_head` the RynnVLA-002 continuous head is added (train/continuous.py), loaded from
    `init_from` when that checkpoint has `action_head.*` tensors, else at random init. With `train.lora.rank`
    > 0 the model gets peft adapters and only they (and the head) train, in fp32; the frozen base is in
    lora.base_dtype (bf16 on a GPU with bf16 training) (train/lora.py).

    Activation checkpointing is the trainer's (distributed.apply_activation_checkpointing), the same way in
    every parallel mode.
    """
    model, mcfg = _build(cfg)
    if lora.enabled(cfg):  # after the head is attached: it trains whole, the backbone through adapters
        lora.apply(model, cfg.train.lora, lora.base_dtype(cfg))
    return model, mcfg


def _build(cfg):
    m = cfg.model
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(m.overrides) - fields)
    if unknown:
        raise ConfigError(f"model.overrides: unknown ModelConfig field(s) {unknown}; valid: {sorted(fields)}")
    settings = {**m.overrides, "dropout": m.dropout, "max_seq_len": cfg.data.max_seq_len}
    extras = {}
    if m.init_from:
        dtype = lora.base_dtype(cfg) if lora.enabled(cfg) else torch.float32  # a frozen 7B base: no fp32 copy
        loaded = load_checkpoint(m.init_from, dtype=dtype, device="cpu", **settings)
        model, mcfg, extras = loaded.model, loaded.model.cfg, loaded.extras
    else:
        try:
            mcfg = ModelConfig.preset(m.preset, **settings)
        except ValueError as err:
            raise ConfigError(f"model.preset: {err}") from None
        model = Transformer(mcfg)
    if not m.action_head:
        if any(k.startswith("action_head.") for k in extras):
            log.info("%s has a continuous action head: not trained here (model.action_head=false)", m.init_from)
        return model, mcfg

    head = ActionHead(head_config(m.action_head_config, mcfg.dim, cfg.data.recipe.chunk_size,
                                  cfg.train.action_head_weight, m.action_head_mask_padding))
    if m.init_from and load_head_weights(head, extras, m.init_from):
        log.info("action head loaded from %s", m.init_from)
    return WithActionHead(model, head), mcfg


def head_settings(model) -> dict | None:
    """The action head's config (for worldvla.json), or None without a head."""
    head = getattr(model, "action_head", None)
    return None if head is None else dataclasses.asdict(head.cfg)


def block_class(model: torch.nn.Module) -> type:
    """The decoder-layer class: the unit of FSDP sharding and activation checkpointing."""
    layers = getattr(model, "layers", None)
    if layers is None or len(layers) == 0:
        raise TypeError(f"{type(model).__name__} has no `layers` list of decoder blocks")
    return type(layers[0])


def size(model_cfg) -> tuple[int, int, int]:
    """(parameter count, layers, width) for the MFU estimate."""
    dim, layers, vocab = model_cfg.dim, model_cfg.n_layers, model_cfg.vocab_size
    ffn = getattr(model_cfg, "intermediate_size", None) or getattr(model_cfg, "ffn_dim", 4 * dim)
    per_layer = 4 * dim * dim + 3 * dim * ffn
    return 2 * vocab * dim + layers * per_layer, layers, dim


# -- mask and loss ------------------------------------------------------------------------------
def attention_mask(batch, action_mask: bool, device, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """(B, 1, L, L) additive mask in `dtype` with WorldVLA's action rule, or None (plain causal: SDPA's fused
    causal kernel) when `action_mask` is off or no row has an action block that the rule isolates."""
    L = batch.input_ids.shape[1]
    if not action_mask or not any(ActionLayout.from_spans(s, L).isolated() for s in batch.spans):
        return None
    return to_additive(batch_mask(batch.spans, L, action_mask=True).to(device, non_blocking=True), dtype)


def mask_dtype(cfg) -> torch.dtype:
    """The dtype attention runs in under `train.precision` (the additive mask's dtype)."""
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


def loss_config(cfg):
    t = cfg.train
    return LossConfig(world_weight=t.world_weight, z_loss_weight=t.z_loss_weight, form=t.loss_form, chunk=t.loss_chunk)


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, loss_cfg, world: torch.Tensor | None = None) -> dict:
    """{"loss": total (with grad), "action_ce", "world_ce", "z_loss": detached or None,
    "n_action_ce", "n_world_ce": the positions those means are over (to average micro-batches)}."""
    out = loss_fn(logits, labels, loss_cfg, world)
    detach = lambda v: None if v is None else v.detach()
    return {"loss": out.total, "action_ce": detach(out.action_ce), "world_ce": detach(out.world_ce),
            "z_loss": detach(out.z_loss), "n_action_ce": out.n_action, "n_world_ce": out.n_world}


def forward_loss(model, ids: torch.Tensor, labels: torch.Tensor, mask, loss_cfg, head_weight: float = 0.0,
                 chunk_size: int = 0, world: torch.Tensor | None = None) -> dict:
    """One micro-batch through `model` (its `__call__`, so FSDP / DDP hooks run) -> compute_loss's dict;
    a model with the continuous head adds `head_weight` x its L1 to "loss" and reports "action_l1"
    (mean over "n_action_l1" rows; None when the micro-batch has no action sample). `world` (B,) bool: the
    batch's world-model rows (Batch.world_rows); the loss and the head read the sample kinds from it."""
    at = predicting_positions(labels)  # logits only where the loss reads them: same loss, a smaller LM head
    if world is not None and _has_action_head(model):
        out = model(ids, mask=mask, world=world.to(ids.device), at=at)
    else:
        out = model(ids, mask=mask, at=at)
    if not isinstance(out, tuple):
        return compute_loss(out, labels, loss_cfg, world)  # (N, V) packed logits
    logits, head_out = out
    res = compute_loss(logits, labels, loss_cfg, world)
    l1, n_rows = head_l1(head_out, labels, chunk_size)
    res["loss"] = res["loss"] + head_weight * l1
    res["action_l1"], res["n_action_l1"] = (l1.detach(), n_rows) if n_rows else (None, 0)
    return res


def _has_action_head(model) -> bool:
    """The continuous-head model, also inside a DDP / DeepSpeed wrapper (FSDP keeps the attribute)."""
    return hasattr(model, "action_head") or hasattr(getattr(model, "module", None), "action_head")


# -- export -------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> None:
    """A real copy, never a hard link: replacing the source later must not change this checkpoint."""
    shutil.copyfile(src, dst)
    with open(dst, "rb") as f:
        os.fsync(f.fileno())


def export_checkpoint(state_dict: dict, folder: Path, model_cfg, cfg, step: int, head: dict | None = None,
                      recipe: Recipe | None = None) -> None:
    """Write the inference files of docs/interfaces.md into `folder` (main process). `state_dict` holds the
    backbone under the official names and, with the continuous head, its `action_head.*` tensors, which
    save_state_dict writes unchanged next to them; `head` is that head's config for worldvla.json.
    `recipe`: the run's Recipe (default cfg.data.recipe); worldvla.json is it, saved (Recipe.save),
    with the step, the head and the sha256 of the tokenizer copies."""
    t = cfg.train
    dtype = getattr(torch, t.save_dtype)
    save_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}, model_cfg, folder)
    files = tokenizer_files(cfg.data.tokenizer)
    (folder / "tokenizer").mkdir(exist_ok=True)
    for name, src in files.items():
        _copy(src, folder / "tokenizer" / name)
    # the hashes are of the copies: they are what from_pretrained verifies
    recipe = recipe if recipe is not None else cfg.data.recipe
    recipe.with_tokenizer(folder / "tokenizer").replace(step=step, action_head=head or {}).save(folder)


def export_lora(state_dict: dict, folder: Path, model_cfg, cfg, step: int, head: dict | None, recipe: Recipe,
                base: dict, merged: bool) -> None:
    """A LoRA run's step folder: the adapters (+ head) and lora.json always; with `merged` also the inference
    files of export_checkpoint from the merged weights (`state_dict` then holds the whole model), their
    worldvla.json recording the LoRA settings and the base's sha256."""
    opts = cfg.train.lora
    lora.write_adapters(state_dict, folder, {**lora.settings(opts, base, merged), "step": step, "action_head": head})
    if merged:
        recipe = recipe.replace(lora=lora.settings(opts, base, True))
        export_checkpoint(lora.merge(state_dict, lora.scaling(opts)), folder, model_cfg, cfg, step, head, recipe)

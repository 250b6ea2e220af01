"""Parallelism applied from outside the model: accelerate (FSDP / FSDP2 / DeepSpeed ZeRO-3 / DDP / one device).

The accelerate config (`configs/accelerate/*.yaml`, via `accelerate launch --config_file`) selects the
strategy; this module completes it from the training config so the YAMLs stay model-agnostic:
- precision: `train.precision` wins over the YAML's `mixed_precision`; with bf16 under FSDP the
  parameters are gathered in bf16 while master weights and gradient reduction stay fp32 (official);
- FSDP units: the model's decoder-layer class (found on the model), plus embeddings / lm_head (FSDP2);
- activation checkpointing: non-reentrant, per decoder layer, applied here (before sharding) in every
  mode, so single-GPU and FSDP runs checkpoint the same modules;
- DeepSpeed: micro-batch, accumulation and clipping copied into its config; a missing install is a
  clear error, not an ImportError deep inside accelerate.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from types import MethodType

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing as apply_ac
from torch.distributed.fsdp import MixedPrecision, MixedPrecisionPolicy

log = logging.getLogger("worldvla.train")


class LaunchError(RuntimeError):
    pass


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def check_deepspeed() -> None:
    if not deepspeed_requested():
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise LaunchError("the accelerate config selects DeepSpeed (distributed_type: DEEPSPEED) but deepspeed is not "
                          "installed: pip install 'worldvla[deepspeed]' on a CUDA machine, or use "
                          "configs/accelerate/fsdp.yaml") from None


def make_accelerator(cfg):
    """The Accelerator of this run (reads the launcher's environment)."""
    check_deepspeed()
    t = cfg.train
    # accelerate's multi-process launcher does not tell the processes about `use_cpu`; without a GPU
    # they must be told here, or each would run alone (gloo process group on CPU). Not under DeepSpeed:
    # cpu=True makes accelerate drop the DeepSpeed plugin and train plainly; DeepSpeed has its own CPU
    # accelerator, so a DeepSpeed config without a GPU runs DeepSpeed on CPU.
    wants_ds = deepspeed_requested()
    acc = Accelerator(cpu=not torch.cuda.is_available() and not wants_ds,
                      mixed_precision="bf16" if t.precision == "bf16" else "no",
                      gradient_accumulation_steps=t.grad_accum, step_scheduler_with_optimizer=False)
    if wants_ds and not is_deepspeed(acc):
        raise LaunchError(f"the accelerate config selects DeepSpeed but accelerate set up {acc.distributed_type}; "
                          "refusing to train without DeepSpeed (check use_cpu / distributed_type in the config)")
    _fsdp_on_cpu(acc)
    if is_fsdp(acc):
        _configure_fsdp(acc, t.precision)
    if is_deepspeed(acc):
        fill_deepspeed_config(acc.state.deepspeed_plugin.deepspeed_config, t)
        log.info("DeepSpeed ZeRO stage %s on %s (%d process(es))",
                 acc.state.deepspeed_plugin.zero_stage, acc.device, acc.num_processes)
    return acc


def fill_deepspeed_config(ds: dict, t) -> dict:
    """Complete accelerate's DeepSpeed config (in place) from the TrainOptions `t`: DeepSpeed itself must
    know the micro-batch, accumulation and clipping, which the accelerate YAML leaves at "auto"."""
    ds["train_micro_batch_size_per_gpu"] = t.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["gradient_clipping"] = t.clip_grad if t.clip_grad > 0 else 0.0
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW as the client optimizer (official)
    ds.pop("train_batch_size", None)  # DeepSpeed derives it (micro-batch x accumulation x processes)
    return ds


def _fsdp_on_cpu(acc) -> None:
    """accelerate turns an FSDP config into plain data parallel on CPU processes; switch FSDP back on
    (FSDP2 `fully_shard` runs on CPU with gloo), so CPU tests shard exactly as GPU runs do."""
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if acc.distributed_type == DistributedType.MULTI_CPU and wants_fsdp:
        plugin = FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise LaunchError("FSDP on CPU processes needs fsdp_version: 2 (configs/accelerate/fsdp_cpu.yaml)")
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState re-reads it


def is_fsdp(acc) -> bool:
    return str(acc.distributed_type).endswith("FSDP")


def is_deepspeed(acc) -> bool:
    return str(acc.distributed_type).endswith("DEEPSPEED")


def _configure_fsdp(acc, precision: str) -> None:
    plugin = acc.state.fsdp_plugin
    if plugin.activation_checkpointing:
        log.info("fsdp_activation_checkpointing in the accelerate config is ignored: the trainer applies "
                 "model.activation_checkpointing itself")
        plugin.activation_checkpointing = False
    if precision != "bf16":
        plugin.mixed_precision_policy = None
        return
    if plugin.fsdp_version == 2:
        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        plugin.mixed_precision_policy = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                       buffer_dtype=torch.float32)


def set_wrap_classes(acc, block_cls: type) -> None:
    """FSDP units = decoder layers, unless the accelerate config names classes itself."""
    if not is_fsdp(acc):
        return
    plugin = acc.state.fsdp_plugin
    if not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = [block_cls.__name__]


def keep_low_precision_outputs(model) -> bool:
    """Undo accelerate's fp32 conversion of the prepared model's outputs, keeping its autocast: under bf16 it
    turns the (B, T, 65536) logits into a whole fp32 copy before the loss, the tensor `train.loss_chunk`
    avoids. Returns False (and changes nothing) when the forward is not accelerate's wrapper as known."""
    forward = model.__dict__.get("forward")
    func = getattr(forward, "__func__", forward)
    inner = getattr(getattr(func, "__wrapped__", None), "model_forward", None)  # accelerate's ConvertOutputsToFp32
    if inner is None:
        return False
    model.forward = MethodType(inner, model) if hasattr(forward, "__func__") else inner
    return True


def apply_activation_checkpointing(model: torch.nn.Module, block_cls: type) -> int:
    """Wrap every `block_cls` module in a non-reentrant checkpoint wrapper; returns how many."""
    n = sum(isinstance(m, block_cls) for m in model.modules())
    apply_ac(model, checkpoint_wrapper_fn=partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
             check_fn=lambda m: isinstance(m, block_cls))
    return n

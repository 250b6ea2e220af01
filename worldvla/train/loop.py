"""The training loop: `python -m worldvla.train --config configs/<preset>.yaml [key=value ...]`.

One optimizer step = `grad_accum` micro-batches of `batch_size` samples on every process. The order of
the batches, the learning rate, the RNG and the weights are all functions of the step, saved in every
checkpoint, so a run killed and resumed (`train.resume=auto`) continues the uninterrupted curve.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from worldvla.config import ConfigError, parse_cli, save_config, to_dict
from worldvla.data.collate import collate
from worldvla.errors import exit_on_input_errors
from worldvla.policy.open_loop import trainer_metrics
from worldvla.recipe import Recipe
from worldvla.train import lora, modeling
from worldvla.train.checkpoint import CheckpointError, CheckpointManager
from worldvla.train.config import TrainConfig
from worldvla.train.data import TrainSet, check_shards, check_views, make_loader
from worldvla.train.distributed import (
    apply_activation_checkpointing,
    is_deepspeed,
    is_fsdp,
    keep_low_precision_outputs,
    make_accelerator,
    set_wrap_classes,
)
from worldvla.train.optim import EpochSchedule, build_optimizer
from worldvla.train.sampler import BatchPlan
from worldvla.train.tracking import RunLogger, flops_per_token, guess_peak_tflops

log = logging.getLogger("worldvla.train")
TERMS = ("loss", "action_ce", "world_ce", "z_loss", "action_l1")


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) stopped being finite; names the step, the batch and its samples."""


@dataclass
class Run:
    cfg: TrainConfig
    acc: object
    model: torch.nn.Module
    optimizer: object
    model_cfg: object
    loss_cfg: object
    dataset: TrainSet
    plan: BatchPlan
    schedule: EpochSchedule
    ckpt: CheckpointManager
    logger: RunLogger | None
    total_steps: int
    out_dir: Path
    recipe: Recipe = field(default_factory=Recipe)  # of the data section: checked against the shards, exported
    lora_base: dict | None = None  # a LoRA run's starting weights (init_from + sha256), recorded in its checkpoints


def setup(cfg: TrainConfig) -> tuple[Run, int]:
    """Build everything and restore the newest checkpoint if resuming; returns (run, first step)."""
    cfg.validate()
    acc = make_accelerator(cfg)
    t, d = cfg.train, cfg.data
    out_dir = Path(t.output_dir)
    recipe = d.recipe
    dataset = TrainSet(d.train, d.kinds, d.max_seq_len, data=d)
    dataset.state_jitter, dataset.seed = d.state_jitter, t.seed
    check_shards(dataset.manifests(), recipe)
    check_views(dataset, d)
    plan = BatchPlan(dataset.lengths, t.batch_size, acc.num_processes, t.grad_accum, t.seed, d.batching,
                     d.group_batches)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.epochs * plan.steps_per_epoch)
    schedule = EpochSchedule(t.lr, t.min_lr, t.warmup_epochs, t.epochs, plan.steps_per_epoch)

    if lora.enabled(cfg) and (is_fsdp(acc) or is_deepspeed(acc)):
        raise ConfigError(f"train.lora: not with {acc.distributed_type} (its shards would mix the frozen bf16 base "
                          "and fp32 adapters); run one process: NGPU=1")
    lora_base = lora.base_info(cfg) if lora.enabled(cfg) else None
    torch.manual_seed(t.seed)  # same initial weights on every process
    model, model_cfg = modeling.build_model(cfg)
    dataset.check_vocab(model_cfg.vocab_size)  # a bad id fails here, naming the shard, not as an IndexError later
    block = modeling.block_class(model)
    if cfg.model.activation_checkpointing:
        apply_activation_checkpointing(model, block)
    set_wrap_classes(acc, block)
    optimizer = build_optimizer(model.parameters(), t.lr, t.weight_decay, t.betas, t.eps)
    model, optimizer = acc.prepare(model, optimizer)
    if t.loss_chunk > 0 and getattr(acc, "native_amp", False) and not keep_low_precision_outputs(model):
        log.warning("train.loss_chunk: the model's outputs stay fp32 (accelerate's wrapper not recognised): the "
                    "loss is the same, but the whole fp32 copy of the logits is made before it")
    if acc.is_main_process:  # which engine really trains (e.g. deepspeed.runtime.engine.DeepSpeedEngine)
        log.info("model engine: %s.%s", type(model).__module__, type(model).__qualname__)

    ckpt = CheckpointManager(out_dir / "checkpoints", acc, t.keep_last, trainable_only=lora.enabled(cfg))
    ckpt.clean_partial()
    start = _resume(cfg, ckpt, model, optimizer, plan, acc, lora_base)
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    run = Run(cfg, acc, model, optimizer, model_cfg, modeling.loss_config(cfg), dataset, plan, schedule, ckpt,
              None, total, out_dir, recipe, lora_base)
    return run, start


def _resume(cfg: TrainConfig, ckpt: CheckpointManager, model, optimizer, plan: BatchPlan, acc,
            lora_base: dict | None = None) -> int:
    t = cfg.train
    path = None
    if t.resume == "auto":
        path = ckpt.latest_intact()  # a damaged newest checkpoint (killed disk, truncated copy) is skipped, logged
    elif t.resume not in ("", "none"):
        path = Path(t.resume)
        if not path.is_dir():
            raise FileNotFoundError(f"train.resume={t.resume}: no such checkpoint folder")
    if path is None and t.resume in ("", "none") and ckpt.latest() is not None:
        raise FileExistsError(f"{ckpt.root} already holds checkpoints (newest {ckpt.latest().name}) and train.resume="
                              f"{t.resume!r}: use a new train.output_dir, or train.resume=auto to continue that run")
    if path is None:
        torch.manual_seed(t.seed + acc.process_index)  # dropout differs across processes
        np.random.seed(t.seed + acc.process_index)
        return 0
    if lora_base is not None:
        lora.check_base(path, lora_base)
    state = ckpt.load(path, model, optimizer)
    if (state.get("n_samples"), state.get("global_batch")) != (len(plan.lengths), plan.global_batch):
        log.warning("resuming %s with another data set size / global batch (%s, %s -> %d, %d): the batch order "
                    "differs from the interrupted run", path, state.get("n_samples"), state.get("global_batch"),
                    len(plan.lengths), plan.global_batch)
    if acc.is_main_process:
        log.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


# -- one optimizer step -------------------------------------------------------------------------
def _batch_names(run: Run, step: int) -> str:
    """Where update `step` (0-based; logged as step + 1) took its samples from."""
    epoch, i = divmod(step, run.plan.steps_per_epoch)
    idx = run.plan.epoch(epoch)[i]
    per = run.plan.batch_size * run.plan.grad_accum
    mine = idx[run.acc.process_index * per: (run.acc.process_index + 1) * per]
    where = ", ".join(f"data.train[{p}] #{j}" for p, j in run.dataset.index[mine].tolist())
    return (f"epoch {epoch}, batch {i} of the epoch, samples {mine.tolist()} of the training set ({where}; "
            f"process {run.acc.process_index})")


def _check_finite(run: Run, value: torch.Tensor, step: int, what: str) -> None:
    bad = (~torch.isfinite(value.detach().float())).float().reshape(1)
    if run.acc.num_processes > 1:
        bad = run.acc.reduce(bad, reduction="sum")
    if bad.item() > 0:
        latest = run.ckpt.latest()
        raise NonFiniteLossError(f"{what} is not finite ({value.item()}) at step {step + 1}: {_batch_names(run, step)}; "
                                 f"last checkpoint: {latest or 'none'}. Lower train.lr, check these samples, or "
                                 "resume from the checkpoint.")


def _accumulate(out: dict, sums: dict, counts: dict) -> None:
    """Add one micro-batch's terms; action / world CE weighted by their positions, the rest per micro-batch."""
    for k in TERMS:
        v = out.get(k)
        if v is None:
            continue
        v, n = float(v.detach()), int(out.get(f"n_{k}", 1))
        if n > 0 and math.isfinite(v):
            sums[k] += v * n
            counts[k] += n


def train_step(run: Run, batches, step: int) -> dict:
    """`grad_accum` micro-batches -> one update. Returns this process's sums for logging."""
    acc, model, cfg = run.acc, run.model, run.cfg
    model.train()
    lr = run.schedule.apply(run.optimizer, step)
    sums = {k: 0.0 for k in TERMS}
    counts = {k: 0 for k in TERMS}
    tokens = padded = 0
    grad_norm = None
    for _ in range(cfg.train.grad_accum):
        batch = next(batches)
        ids = batch.input_ids.to(acc.device, non_blocking=True)  # (B, L)
        labels = batch.labels.to(acc.device, non_blocking=True)  # (B, L)
        mask = modeling.attention_mask(batch, cfg.model.action_mask, acc.device, modeling.mask_dtype(cfg))
        with acc.accumulate(model):
            out = modeling.forward_loss(model, ids, labels, mask, run.loss_cfg, cfg.train.action_head_weight,
                                        cfg.data.recipe.chunk_size, batch.world_rows())
            if cfg.train.nan_check:
                _check_finite(run, out["loss"], step, "the loss")
            acc.backward(out["loss"])
            if acc.sync_gradients and cfg.train.clip_grad > 0:
                grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
                if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
                    grad_norm = grad_norm.full_tensor()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        _accumulate(out, sums, counts)
        tokens += int(batch.lengths.sum())
        padded += batch.input_ids.numel()
    if grad_norm is not None and cfg.train.nan_check:
        _check_finite(run, torch.as_tensor(grad_norm), step, "the gradient norm")
    return {"sums": sums, "counts": counts, "tokens": tokens, "padded": padded, "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm)}


# -- logging ------------------------------------------------------------------------------------
class Window:
    """Loss terms and throughput since the last log line, reduced over processes when logged."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums = {k: 0.0 for k in TERMS}
        self.counts = {k: 0 for k in TERMS}
        self.tokens = self.padded = self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, res: dict):
        for k in TERMS:
            self.sums[k] += res["sums"][k]
            self.counts[k] += res["counts"][k]
        self.tokens += res["tokens"]
        self.padded += res["padded"]
        self.steps += 1

    def record(self, run: Run, step: int, res: dict) -> dict:
        acc = run.acc
        vals = [self.sums[k] for k in TERMS] + [float(self.counts[k]) for k in TERMS] + [float(self.tokens),
                                                                                         float(self.padded)]
        vec = torch.tensor(vals, dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            vec = acc.reduce(vec, reduction="sum")
        vec = vec.tolist()
        n = len(TERMS)
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rec = {"step": step, "epoch": round(step / run.plan.steps_per_epoch, 4), "lr": res["lr"]}
        for i, k in enumerate(TERMS):
            rec[k] = vec[i] / vec[n + i] if vec[n + i] > 0 else None
        tokens, padded = vec[2 * n], vec[2 * n + 1]
        rec["grad_norm"] = res["grad_norm"]
        rec["tokens_per_s"] = tokens / dt
        rec["padding"] = 1.0 - tokens / padded if padded else 0.0
        rec["step_s"] = dt / max(self.steps, 1)
        peak = run.cfg.logging.peak_tflops or guess_peak_tflops()
        if peak > 0:
            n_params, n_layers, dim = modeling.size(run.model_cfg)
            seq = padded / max(self.steps * run.plan.global_batch, 1)
            rec["mfu"] = flops_per_token(n_params, n_layers, dim, seq) * padded / dt / (peak * 1e12 * acc.num_processes)
        if torch.cuda.is_available():
            rec["mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.reset()
        return rec


# -- validation ---------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(run: Run, val: TrainSet) -> dict:
    """Mean loss terms over the validation set (every process takes its share of whole global batches)."""
    acc, cfg = run.acc, run.cfg
    per = cfg.train.batch_size
    n_batches = len(val) // (per * acc.num_processes)
    if n_batches == 0:
        return {}

    run.model.eval()
    sums = torch.zeros(2 * len(TERMS), dtype=torch.float64, device=acc.device)
    order = np.argsort(-val.lengths, kind="stable")  # similar lengths together: little padding
    for b in range(n_batches):
        lo = (b * acc.num_processes + acc.process_index) * per
        batch = collate([val[int(i)] for i in order[lo: lo + per]], cfg.data.max_seq_len)
        mask = modeling.attention_mask(batch, cfg.model.action_mask, acc.device, modeling.mask_dtype(cfg))
        out = modeling.forward_loss(run.model, batch.input_ids.to(acc.device), batch.labels.to(acc.device), mask,
                                    run.loss_cfg, cfg.train.action_head_weight, cfg.data.recipe.chunk_size, batch.world_rows())
        part_sums, part_counts = {k: 0.0 for k in TERMS}, {k: 0 for k in TERMS}
        _accumulate(out, part_sums, part_counts)
        for i, k in enumerate(TERMS):
            sums[i] += part_sums[k]
            sums[len(TERMS) + i] += part_counts[k]
    if acc.num_processes > 1:
        sums = acc.reduce(sums, reduction="sum")
    s = sums.tolist()
    return {f"val_{k}": s[i] / s[len(TERMS) + i] for i, k in enumerate(TERMS) if s[len(TERMS) + i] > 0}


def open_loop(run: Run, val: TrainSet, step: int) -> dict:
    """Free-running action decoding on data.val (train.open_loop_samples > 0): what teacher-forced loss
    cannot show, the error of action k given the model's own actions 1..k-1 (worldvla.eval.open_loop)."""
    n = run.cfg.train.open_loop_samples
    if n <= 0:
        return {}
    if run.acc.num_processes > 1:
        if run.acc.is_main_process and step == run.plan.steps_per_epoch:
            log.warning("train.open_loop_samples: skipped with %d processes (decoding needs the whole model on "
                        "one process; run python -m worldvla.eval.open_loop on a checkpoint)", run.acc.num_processes)
        return {}
    return trainer_metrics(run.acc.unwrap_model(run.model), run.recipe, run.cfg.data.tokenizer,
                           run.cfg.model.action_mask, val, n, run.out_dir / "open_loop" / f"step_{step:08d}.json", str(run.acc.device))


# -- checkpoints --------------------------------------------------------------------------------
def save(run: Run, step: int, final: bool = False) -> Path:
    """Checkpoint `step`; a LoRA run writes the merged inference files only when `final` or merge=every_save."""
    plan = run.plan
    state = {"epoch": step // plan.steps_per_epoch, "step_in_epoch": step % plan.steps_per_epoch,
             "steps_per_epoch": plan.steps_per_epoch, "global_batch": plan.global_batch,
             "n_samples": len(plan.lengths), "schedule": run.schedule.state_dict(),
             "lr": run.schedule(max(step - 1, 0)), "total_steps": run.total_steps, "time": time.time()}

    head = modeling.head_settings(run.acc.unwrap_model(run.model))

    merged = run.lora_base is None or final or run.cfg.train.lora.merge == "every_save"

    def export(full_state: dict, folder: Path) -> None:
        if run.lora_base is None:
            modeling.export_checkpoint(full_state, folder, run.model_cfg, run.cfg, step, head, run.recipe)
        else:
            modeling.export_lora(full_state, folder, run.model_cfg, run.cfg, step, head, run.recipe, run.lora_base,
                                 merged)
        save_config(run.cfg, folder / "train_config.yaml")

    return run.ckpt.save(step, run.model, run.optimizer, state, export, whole=merged)


def _due(run: Run, step: int) -> bool:
    t = run.cfg.train
    epoch_end = step % run.plan.steps_per_epoch == 0
    return bool((t.save_every_steps > 0 and step % t.save_every_steps == 0)
                or (t.save_every_epochs > 0 and epoch_end and (step // run.plan.steps_per_epoch) % t.save_every_epochs == 0))


# -- main ---------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run (or finish) the training described by `cfg`; returns a summary."""
    run, step = setup(cfg)
    acc = run.acc
    run.logger = logger = RunLogger(run.out_dir, cfg, acc.is_main_process, run.total_steps, resume_step=step)
    val = TrainSet(cfg.data.val, cfg.data.kinds, cfg.data.max_seq_len, "data.val", data=cfg.data) if cfg.data.val \
        else None
    if val is not None:
        val.check_vocab(run.model_cfg.vocab_size)
    if acc.is_main_process:
        logger.info("%d samples (%s), %d steps per epoch x global batch %d, %d steps in all, %d processes (%s)",
                    len(run.dataset), ", ".join(cfg.data.kinds), run.plan.steps_per_epoch, run.plan.global_batch,
                    run.total_steps, acc.num_processes, acc.distributed_type)
    window = Window()
    spe = run.plan.steps_per_epoch
    while step < run.total_steps:
        epoch, first = divmod(step, spe)
        run.dataset.epoch = epoch  # the state jitter's draw (before the loader copies the dataset to its workers)
        loader = make_loader(run.dataset, run.plan, epoch, acc.process_index, first, cfg.data.max_seq_len,
                             cfg.data.num_workers)
        batches = iter(loader)
        for _ in range(first, spe):
            if step >= run.total_steps:
                break
            res = train_step(run, batches, step)
            window.add(res)
            step += 1
            logger.advance()
            if step % cfg.logging.log_every == 0 or step == run.total_steps:
                logger.log(window.record(run, step, res))
            if step % spe == 0 and val is not None:
                logger.log({"step": step, "epoch": step / spe, **evaluate(run, val), **open_loop(run, val, step)})
            if _due(run, step) and not (run.lora_base is not None and step == run.total_steps):
                save(run, step)  # (a LoRA run's last step is saved below, merged)
        del batches, loader
    if val is not None and cfg.train.open_loop_samples > 0 and step % spe != 0:
        logger.log({"step": step, "epoch": step / spe, **open_loop(run, val, step)})  # the final model too
    last_saved = save(run, step, final=True)  # the final state (returns the folder when this step is already saved)
    plot = logger.close(cfg.logging.plot)
    acc.wait_for_everyone()
    acc.end_training()
    return {"steps": step, "checkpoint": str(last_saved), "log": str(logger.path), "plot": str(plot) if plot else None,
            "config": to_dict(cfg)}


def main(argv=None) -> dict:
    return exit_on_input_errors(_main, CheckpointError)(argv)


def _main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    cfg = parse_cli(TrainConfig, argv, description=__doc__)
    return train(cfg)

"""Open-loop scoring of a policy: decode action prompts free-running, score the chunks against the expert.

The metrics (L1 per chunk position and dimension, gripper agreement, token accuracy) and the trainer's
hook (`trainer_metrics`, used by worldvla.train on data.val) live here, below train and eval; the
command line over conversation files and manifests is worldvla.eval.open_loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worldvla import vocab as V
from worldvla.atomic import atomic_write
from worldvla.data.processor import Processor
from worldvla.policy.policy import WorldVLAPolicy
from worldvla.recipe import Recipe

GRIPPER = 6  # index of the gripper dimension of a LIBERO action
DIM_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


@dataclass
class ActionSample:
    """One action sample: the generation prompt and the expert's chunk."""

    prompt: list[int]
    expert: np.ndarray  # (K, 7) env units
    expert_tokens: np.ndarray  # (K, 7) action-bin ids of the expert chunk
    name: str = ""


# -- scoring --------------------------------------------------------------------------------------
def score(pred: np.ndarray, expert: np.ndarray, pred_tokens: np.ndarray, expert_tokens: np.ndarray) -> dict:
    """(N, K, 7) predicted / expert actions (env units) and their bin ids -> the open-loop metrics."""
    pred, expert = np.asarray(pred, np.float64), np.asarray(expert, np.float64)
    pred_tokens, expert_tokens = np.asarray(pred_tokens), np.asarray(expert_tokens)
    if pred.shape != expert.shape or pred.ndim != 3 or pred.shape[-1] != len(DIM_NAMES):
        raise ValueError(f"predicted {pred.shape} and expert {expert.shape} actions must both be (N, K, 7)")
    if pred_tokens.shape != pred.shape or expert_tokens.shape != pred.shape:
        raise ValueError(f"token arrays {pred_tokens.shape} / {expert_tokens.shape} must match {pred.shape}")
    if len(pred) == 0:
        raise ValueError("no action samples to score")
    err = np.abs(pred - expert)  # (N, K, 7)
    grip = (pred[..., GRIPPER] > 0) == (expert[..., GRIPPER] > 0)  # (N, K): same open/close command
    hit = pred_tokens == expert_tokens  # (N, K, 7)
    return {
        "n_samples": len(pred), "chunk_size": int(pred.shape[1]), "dims": list(DIM_NAMES),
        "l1": float(err.mean()),
        "l1_by_position": err.mean(axis=(0, 2)).tolist(),  # mean over the 7 dimensions, k = 1..K
        "l1_arm_by_position": err[..., :GRIPPER].mean(axis=(0, 2)).tolist(),  # the 6 arm dimensions only
        "l1_by_dim": err.mean(axis=(0, 1)).tolist(),
        "l1_by_position_dim": err.mean(axis=0).tolist(),  # (K, 7)
        "gripper_agreement": float(grip.mean()),
        "gripper_agreement_by_position": grip.mean(axis=0).tolist(),
        "token_accuracy": float(hit.mean()),
        "token_accuracy_by_position": hit.mean(axis=(0, 2)).tolist(),
    }


def evaluate(policy, samples: Sequence[ActionSample], batch_size: int = 16, progress: bool = False) -> dict:
    """Decode every sample's prompt with `policy.predict_tokens` (its decode mode and mask) and score the
    de-normalised chunks against the experts. `policy` needs `predict_tokens(prompts) -> [(K, 7) bins]`,
    `action_tok` (the checkpoint's ActionTokenizer) and `chunk_size`."""
    if not samples:
        raise ValueError("no action samples to evaluate")
    k = policy.chunk_size
    for s in samples:
        if s.expert.shape != (k, len(DIM_NAMES)):
            raise ValueError(f"sample {s.name or '?'}: expert chunk {s.expert.shape}, the policy decodes ({k}, 7)")
    tokens = []
    bar = None
    if progress:
        bar = tqdm(total=len(samples), desc="open-loop", unit="sample")
    for i in range(0, len(samples), max(1, batch_size)):
        batch = samples[i: i + batch_size]
        out = policy.predict_tokens([s.prompt for s in batch])
        for s, t in zip(batch, out):
            t = np.asarray(t, dtype=np.int64)
            if t.shape != (k, len(DIM_NAMES)):
                raise RuntimeError(f"sample {s.name or '?'}: decoded {t.shape} action bins, expected ({k}, 7)")
            tokens.append(t)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    pred_tokens = np.stack(tokens)
    pred = policy.action_tok.decode(pred_tokens)
    return score(pred, np.stack([s.expert for s in samples]), pred_tokens, np.stack([s.expert_tokens for s in samples]))


def sample_from_tokens(sample, action_tok, name: str = "") -> ActionSample:
    """An action-model `Sample` (input_ids, labels, spans): the prompt is everything before the first
    supervised position; the expert chunk is its labelled action blocks at their bin centres."""
    first = next((j for j, lab in enumerate(sample.labels) if lab != V.IGNORE_INDEX), None)
    if first is None:
        raise ValueError(f"sample {name}: no supervised tokens")
    blocks = [s for s in sample.spans if s.kind == "action" and s.start >= first]
    if not blocks:
        raise ValueError(f"sample {name}: not an action-model sample (no action block after the prompt)")
    tokens = np.asarray([sample.input_ids[s.start + 1: s.end - 1] for s in blocks], dtype=np.int64)
    return ActionSample(list(sample.input_ids[:first]), action_tok.decode(tokens), tokens, name)


def samples_from_dataset(dataset, action_tok, max_samples: int = 0, where: str = "data") -> list[ActionSample]:
    """Action samples of a `worldvla.train.data.TrainSet` (or anything with `index`, `parts` and items)."""
    action = [i for i, (part, item) in enumerate(dataset.index) if dataset.parts[int(part)].kind(int(item)) == "action"]
    chosen = _spread(action, max_samples)
    return [sample_from_tokens(dataset[i], action_tok, f"{where} #{i}") for i in chosen]


def _spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (all when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[int(j)] for j in np.linspace(0, len(items) - 1, n).round().astype(int)]


# -- the trainer's hook ---------------------------------------------------------------------------------
def policy_for_model(model, recipe: Recipe, tokenizer: str | Path, action_mask: bool, device: str = "cpu"):
    """A WorldVLAPolicy around an in-memory model, with a training run's Recipe (its `data.recipe`) and the
    tokenizer files in `tokenizer`: what the trainer decodes `data.val` with."""
    return WorldVLAPolicy(model, Processor.from_folder(recipe, tokenizer, device=device),
                          decode="parallel" if action_mask else "sequential", action_mask=action_mask)


def trainer_metrics(model, recipe: Recipe, tokenizer: str | Path, action_mask: bool, dataset, max_samples: int,
                    out_path: Path | None = None, device: str = "cpu") -> dict:
    """Open-loop metrics of `model` on the action samples of a TrainSet (data.val), as flat log values
    (`val_open_loop_l1`, `..._l1_k<k>`, gripper agreement, token accuracy); the full result goes to
    `out_path` (JSON) when given. The model is put in eval mode and restored."""
    was_training = model.training
    model.eval()
    try:
        policy = policy_for_model(model, recipe, tokenizer, action_mask, device)
        samples = samples_from_dataset(dataset, policy.action_tok, max_samples, "data.val")
        if not samples:
            return {}
        res = evaluate(policy, samples, batch_size=16)
    finally:
        model.train(was_training)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(out_path, {**res, "decode": policy.decode, "action_mask": action_mask,
                               "expert": "bin centres of the recorded action tokens"})
    flat = {"val_open_loop_l1": res["l1"], "val_open_loop_gripper_agreement": res["gripper_agreement"],
            "val_open_loop_token_accuracy": res["token_accuracy"], "val_open_loop_samples": res["n_samples"]}
    flat.update({f"val_open_loop_l1_k{k + 1}": v for k, v in enumerate(res["l1_by_position"])})
    return flat


def _write_json(path: Path, payload: dict) -> None:
    atomic_write(path, json.dumps(payload, indent=1, allow_nan=False))  # fsync + rename: a rerun trusts it

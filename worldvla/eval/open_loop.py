"""Open-loop action evaluation: free-running chunk decoding on held-out samples, scored against the expert.

    python -m worldvla.eval.open_loop policy=CKPT manifest=CONVS/libero_goal_256_conversations_manifest.json \
        splits=[val_ind,val_ood] out_dir=OUT
    python -m worldvla.eval.open_loop policy=CKPT inputs=[a.json,b.json] out_dir=OUT   # any action-sample files

Why: teacher-forced validation loss feeds the expert's actions 1..k-1 when it scores action k, so it
cannot show what the WorldVLA action attention mask is for. Here each action sample (instruction + the
last M frames, `data/conversations.py`) is decoded with the policy exactly as in a LIBERO rollout
(`WorldVLAPolicy.prompt_ids` + `predict_tokens`, any decode mode), so under a causal mask action k is
conditioned on the model's own actions 1..k-1. Scores, in env units (de-normalised with the
checkpoint's statistics):
- L1 |predicted - expert| per chunk position k and per action dimension, and their means;
- gripper sign agreement (LIBERO: -1 opens, +1 closes) per position;
- token accuracy (predicted bin == the expert action's bin) per position.
Writes `<out_dir>/open_loop_<name>.json` and `open_loop_<name>_l1_vs_k.png` per split / input file.

Inputs: conversation JSON files (expert actions read from their `.npy` files, exact env units) or
pretokenized token data (expert actions = the bin centres of the recorded tokens; what
`worldvla.train` can pass for `data.val`). A checkpoint trained without the action mask
(`train_config.yaml: model.action_mask: false`) is decoded causally (`decode=sequential`) unless
`action_mask=` says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from worldvla.config import parse_cli, save_config
from worldvla.data.datasets import PretokenizedDataset
from worldvla.policy.decode import DecodeMode
from worldvla.policy.interface import PolicySource
from worldvla.policy.open_loop import (  # noqa: F401 (re-exported: the scoring is the policy layer's)
    DIM_NAMES,
    GRIPPER,
    ActionSample,
    _spread,
    _write_json,
    evaluate,
    policy_for_model,
    sample_from_tokens,
    samples_from_dataset,
    score,
    trainer_metrics,
)
from worldvla.policy.policy import WorldVLAPolicy, resolve_decode

# matplotlib (slow to import, only for the plot) is imported where the plot is drawn.

log = logging.getLogger("worldvla.open_loop")

_INSTRUCTION = re.compile(r"^What action should the robot take to (.*)\?(?=<\|state\|>|<\|image\|>)", re.DOTALL)


@dataclass
class OpenLoopConfig:
    renamed: ClassVar[dict[str, str]] = {"checkpoint": "policy.path", "tokenizer": "policy.tokenizer"}
    # the checkpoint folder (policy=CKPT; an official folder with policy.tokenizer, policy.recipe as in eval)
    policy: PolicySource = field(default_factory=PolicySource)
    manifest: str = ""  # a conversations manifest (data/conversations.py): its action files of `splits` are scored
    splits: list[str] = field(default_factory=lambda: ["val_ind", "val_ood"])  # with manifest=
    inputs: list[str] = field(default_factory=list)  # action-sample files: conversation JSON or pretokenized data
    base_dir: str | None = None  # relative media paths of conversation records resolve against this (default: cwd)
    decode: DecodeMode = "auto"  # auto: parallel under the action mask, else sequential
    action_mask: bool | None = None  # None: the checkpoint's train_config.yaml model.action_mask (default true)
    max_samples: int = 0  # > 0: score only the first N action samples of each split (evenly spaced)
    batch_size: int = 16  # prompts decoded together (batching does not change the tokens)
    out_dir: str = "outputs/open_loop"
    device: str = "cpu"


# -- samples from conversation files ----------------------------------------------------------------
def instruction_of(record: dict, where: str) -> str:
    """The instruction of an action-model record (its human turn, data/sequence.py ACTION_PROMPT)."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    human = turns[0].get("value", "") if turns and isinstance(turns[0], dict) else ""
    m = _INSTRUCTION.match(str(human))
    if m is None:
        raise ValueError(f"{where}: conversations[0].value is not an action-model prompt "
                         f"('What action should the robot take to ...?<|image|>...'): {str(human)[:80]!r}")
    return m.group(1)


def is_action_record(record: dict) -> bool:
    turns = record.get("conversations") or []
    return bool(turns) and "<|action|>" in str(turns[-1].get("value", "")) and turns[-1].get("from") == "gpt"


def _resolve(path: str, base_dir: str | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def samples_from_records(policy, records: Sequence[dict], source: str, base_dir: str | None = None,
                         indices: Iterable[int] | None = None) -> list[ActionSample]:
    """Action samples of conversation records: images/actions/state loaded from their files, the prompt
    built by the policy as in a rollout (third-person and wrist frames de-interleaved)."""
    out = []
    for i in range(len(records)) if indices is None else indices:
        rec, where = records[i], f"{source} record {i}"
        instr = instruction_of(rec, where)
        try:
            frames = [np.asarray(Image.open(_resolve(p, base_dir)).convert("RGB")) for p in rec.get("image") or []]
            expert = np.stack([np.load(_resolve(p, base_dir)).astype(np.float64).reshape(-1) for p in rec["action"]])
            state = np.load(_resolve(rec["state"][0], base_dir)) if rec.get("state") else None
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{where}: cannot read its media ({err}); base_dir={base_dir!r}") from err
        third, wrist = (frames[0::2], frames[1::2]) if policy.uses_wrist else (frames, None)
        prompt = policy.prompt_ids(instr, third, wrist, state)
        out.append(ActionSample(prompt, expert, policy.action_tok.encode(expert), f"{source}#{i}"))
    return out


# -- samples from token data (what the trainer holds for data.val) ----------------------------------
# -- inputs -------------------------------------------------------------------------------------------
def split_files(manifest: str | os.PathLike, splits: Sequence[str]) -> dict[str, Path]:
    """{split: action-sample JSON} from a conversations manifest; splits without action files are skipped."""
    path = Path(manifest)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest={path}: not found (`worldvla conversations` writes it next to the JSONs)") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ValueError(f"{path}: no 'files' mapping (not a conversations manifest)")  # noqa: TRY004 - callers catch ValueError
    out = {}
    for split in splits:
        if split not in files:
            raise ValueError(f"{path}: split {split!r} not in files ({sorted(files)})")
        name = files[split].get("action")
        counts = (data.get("counts") or {}).get(split, {})
        if name and counts.get("action", 1) > 0:
            out[split] = path.parent / name
        else:
            log.warning("%s: split %s has no action samples, skipped", path, split)
    return out


def load_samples(policy, path: Path, base_dir: str | None, max_samples: int) -> list[ActionSample]:
    """Action samples of one input: a conversation JSON list, else pretokenized data."""
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, list):
            keep = [i for i, r in enumerate(data) if isinstance(r, dict) and is_action_record(r)]
            if not keep:
                raise ValueError(f"{path}: no action-model records (gpt turn with <|action|>)")
            return samples_from_records(policy, data, path.name, base_dir, _spread(keep, max_samples))

    ds = PretokenizedDataset(path)
    action = [i for i in range(len(ds)) if ds.kind(i) == "action"]
    if not action:
        raise ValueError(f"{path}: no action-model samples")
    return [sample_from_tokens(ds[i], policy.action_tok, f"{path.name}#{i}") for i in _spread(action, max_samples)]


# -- report -------------------------------------------------------------------------------------------
def plot_l1_vs_position(curves: dict[str, dict], path: str | os.PathLike, title: str = "") -> Path:
    """One PNG: L1 (env units, mean over the 7 dimensions) against the chunk position k, one line per
    result of `score` in `curves` ({label: result})."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, res in curves.items():
        ys = res["l1_by_position"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"{label} (n={res['n_samples']})")
    longest = max((len(r["l1_by_position"]) for r in curves.values()), default=1)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("position k of the action in its chunk")
    ax.set_ylabel("L1 to the expert action (env units, mean of 7 dims)")
    ax.set_title(title or "open-loop action error by chunk position")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def markdown_row(label: str, res: dict) -> str:
    cells = " | ".join(f"{v:.4f}" for v in res["l1_by_position"])
    return (f"| {label} | {res['n_samples']} | {cells} | {res['gripper_agreement']:.3f} | "
            f"{res['token_accuracy']:.3f} |")


def markdown_table(results: dict[str, dict]) -> str:
    k = max(r["chunk_size"] for r in results.values())
    head = " | ".join(f"L1 k={i}" for i in range(1, k + 1))
    lines = [f"| split | samples | {head} | gripper sign agreement | token accuracy |",
             "|---|---:|" + "---:|" * k + "---:|---:|"]
    return "\n".join([*lines, *(markdown_row(label, r) for label, r in results.items())]) + "\n"


# -- main ---------------------------------------------------------------------------------------------
def run(cfg: OpenLoopConfig, policy=None) -> dict[str, dict]:
    """Score every split / input; returns {name: result} and writes the JSON, markdown and plots."""
    if not cfg.manifest and not cfg.inputs:
        raise ValueError("pass manifest=<conversations manifest> (with splits=) or inputs=[files]")
    if policy is None:
        if not cfg.policy.path:
            raise ValueError("policy=<checkpoint folder> is required")
        policy = WorldVLAPolicy.from_pretrained(cfg.policy.path, device=cfg.device, tokenizer=cfg.policy.tokenizer,
                                                **cfg.policy.recipe)
        if cfg.action_mask is not None:  # decode a checkpoint under the other mask than it trained with
            policy.action_mask = cfg.action_mask
            if cfg.decode == "auto":
                policy.decode = resolve_decode("auto", True, cfg.action_mask)
        if cfg.decode != "auto":
            policy.decode = cfg.decode
        log.info("decoding with decode=%s, action_mask=%s", policy.decode, policy.action_mask)
    named: dict[str, Path] = split_files(cfg.manifest, cfg.splits) if cfg.manifest else {}
    for p in cfg.inputs:
        named[Path(p).stem] = Path(p)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, path in named.items():
        samples = load_samples(policy, path, cfg.base_dir, cfg.max_samples)
        res = evaluate(policy, samples, cfg.batch_size, progress=True)
        res.update({"source": str(path), "decode": getattr(policy, "decode", None),
                    "action_mask": getattr(policy, "action_mask", None), "checkpoint": cfg.policy.path})
        _write_json(out / f"open_loop_{name}.json", res)
        plot_l1_vs_position({name: res}, out / f"open_loop_{name}_l1_vs_k.png", f"open-loop L1 by chunk position: {name}")
        log.info("%s: %d samples, L1 by position %s, gripper agreement %.3f, token accuracy %.3f", name,
                 res["n_samples"], [round(v, 4) for v in res["l1_by_position"]], res["gripper_agreement"],
                 res["token_accuracy"])
        results[name] = res
    if results:
        (out / "open_loop.md").write_text(markdown_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(OpenLoopConfig, argv, description=__doc__)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out_dir) / "open_loop_config.yaml")
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

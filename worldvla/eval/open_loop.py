"""Open-loop action evaluation: free-running chunk decoding on held-out samples, scored against the expert.

    python -m worldvla.eval.open_loop checkpoint=CKPT manifest=CONVS/libero_goal_256_conversations_manifest.json \
        splits=[val_ind,val_ood] out_dir=OUT
    python -m worldvla.eval.open_loop checkpoint=CKPT inputs=[a.json,b.json] out_dir=OUT   # any action-sample files

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

import numpy as np

log = logging.getLogger("worldvla.open_loop")

GRIPPER = 6  # index of the gripper dimension of a LIBERO action
DIM_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
_INSTRUCTION = re.compile(r"^What action should the robot take to (.*)\?(?=<\|state\|>|<\|image\|>)", re.DOTALL)


@dataclass
class OpenLoopConfig:
    checkpoint: str = ""  # worldvla checkpoint folder (or official folder + tokenizer=)
    tokenizer: str | None = None  # tokenizer folder for official checkpoints without one
    manifest: str = ""  # a conversations manifest (data/conversations.py): its action files of `splits` are scored
    splits: list[str] = field(default_factory=lambda: ["val_ind", "val_ood"])  # with manifest=
    inputs: list[str] = field(default_factory=list)  # action-sample files: conversation JSON or pretokenized data
    base_dir: str | None = None  # relative media paths of conversation records resolve against this (default: cwd)
    decode: str = "auto"  # auto (parallel under the action mask, else sequential) | parallel | sequential | ...
    action_mask: bool | None = None  # None: the checkpoint's train_config.yaml model.action_mask (default true)
    max_samples: int = 0  # > 0: score only the first N action samples of each split (evenly spaced)
    batch_size: int = 16  # prompts decoded together (batching does not change the tokens)
    out_dir: str = "outputs/open_loop"
    device: str = "cpu"


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
        from tqdm import tqdm

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
    from PIL import Image

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
def sample_from_tokens(sample, action_tok, name: str = "") -> ActionSample:
    """An action-model `Sample` (input_ids, labels, spans): the prompt is everything before the first
    supervised position; the expert chunk is its labelled action blocks at their bin centres."""
    from worldvla import vocab as V

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
def policy_for_model(model, data, action_mask: bool, device: str = "cpu"):
    """A WorldVLAPolicy around an in-memory model, with the tokenizers and statistics of a training run's
    data section (`worldvla.train.config.DataOptions`): what the trainer decodes `data.val` with."""
    from worldvla.policy.policy import PolicySettings, WorldVLAPolicy
    from worldvla.tokenizers import ImageTokenizer, TextTokenizer

    tok = Path(data.tokenizer)
    text = TextTokenizer(tok / "text_tokenizer.json")
    images = ImageTokenizer.from_files(tok / "vqgan.yaml", tok / "vqgan.ckpt", text.vocab, data.resolution, device=device)
    settings = PolicySettings(chunk_size=data.chunk_size, history=data.history, resolution=data.resolution,
                              action_stats=data.action_stats, state_stats=data.state_stats,
                              with_state=data.with_state, with_wrist=data.with_wrist)
    return WorldVLAPolicy(model, text, images, settings, decode="parallel" if action_mask else "sequential",
                          action_mask=action_mask)


def trainer_metrics(model, data, action_mask: bool, dataset, max_samples: int, out_path: Path | None = None,
                    device: str = "cpu") -> dict:
    """Open-loop metrics of `model` on the action samples of a TrainSet (data.val), as flat log values
    (`val_open_loop_l1`, `..._l1_k<k>`, gripper agreement, token accuracy); the full result goes to
    `out_path` (JSON) when given. The model is put in eval mode and restored."""
    was_training = model.training
    model.eval()
    try:
        policy = policy_for_model(model, data, action_mask, device)
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


# -- inputs -------------------------------------------------------------------------------------------
def split_files(manifest: str | os.PathLike, splits: Sequence[str]) -> dict[str, Path]:
    """{split: action-sample JSON} from a conversations manifest; splits without action files are skipped."""
    path = Path(manifest)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest={path}: not found (data/conversations.py writes it next to the JSONs)") from None
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
    from worldvla.data.datasets import PretokenizedDataset

    ds = PretokenizedDataset(path)
    action = [i for i in range(len(ds)) if ds.kind(i) == "action"]
    if not action:
        raise ValueError(f"{path}: no action-model samples")
    return [sample_from_tokens(ds[i], policy.action_tok, f"{path.name}#{i}") for i in _spread(action, max_samples)]


def checkpoint_action_mask(folder: str | os.PathLike) -> bool:
    """model.action_mask of the run that wrote a worldvla checkpoint (true when it is not recorded)."""
    path = Path(folder) / "train_config.yaml"
    if not path.is_file():
        return True
    import yaml

    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    return bool(model.get("action_mask", True))


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


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))
    tmp.replace(path)


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
    from worldvla.policy.policy import DECODE_MODES, WorldVLAPolicy

    if not cfg.manifest and not cfg.inputs:
        raise ValueError("pass manifest=<conversations manifest> (with splits=) or inputs=[files]")
    if policy is None:
        if not cfg.checkpoint:
            raise ValueError("checkpoint=<folder> is required")
        policy = WorldVLAPolicy.from_pretrained(cfg.checkpoint, device=cfg.device, tokenizer=cfg.tokenizer)
        mask = checkpoint_action_mask(cfg.checkpoint) if cfg.action_mask is None else cfg.action_mask
        policy.action_mask = mask
        decode = ("parallel" if mask else "sequential") if cfg.decode == "auto" else cfg.decode
        if decode not in DECODE_MODES:
            raise ValueError(f"decode={cfg.decode!r}; valid: auto, {', '.join(DECODE_MODES)}")
        policy.decode = decode
        log.info("decoding with decode=%s, action_mask=%s", decode, mask)
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
                    "action_mask": getattr(policy, "action_mask", None), "checkpoint": cfg.checkpoint})
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
    from worldvla.config import parse_cli, save_config

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(OpenLoopConfig, argv, description=__doc__)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out_dir) / "open_loop_config.yaml")
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

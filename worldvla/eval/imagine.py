"""World-model imagination: roll the world model forward from a frame and an action sequence.

    python -m worldvla.eval.imagine policy=CKPT data_dir=DIR split=val_ind horizon=10 out_dir=OUT

For each trajectory of the split (exported layout `<task>/trj_<i>/{action,imgs}`, see data/README.md),
the first frame and the ground-truth actions drive an autoregressive rollout: at step t the prompt
is the world-model prompt with the current (imagined) frame and action t, and the next frame is
generated under the image-span constraints (`generate_image`). Trajectories are batched; each step
is one KV-cached constrained decode for the whole batch. Writes per trajectory a ground-truth vs
imagined strip (PNG) and GIF, and the video metrics (PSNR/SSIM, LPIPS/FVD with local weights) as
JSON, markdown table and plots against horizon.

`wrist=true` runs the bi-view world model of RynnVLA-002 (official_format.md section 10.1): the
prompt holds the current third-person and wrist frames and the action, the answer is the next
third-person image followed by the next wrist image; both views are rolled out, shown in the strips
(truth over imagined, one pair of rows per view) and scored (`inf` third-person, `inf_wrist`).
Use `image_dir=imgs_third_view` with the RynnVLA-002 export layout.

`sensitivity=true` measures how much the imagined frames depend on the action: the same trajectories
are also imagined with their actions shuffled within the trajectory (seeded by `shuffle_seed` and the
trajectory's name) and with zero actions. The report gains the rows `<view>_shuffled_actions` and
`<view>_zero_actions` and the gap (PSNR / SSIM with the true actions minus with the altered ones) per
horizon; a world model that ignores its action has a gap of exactly zero.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import imageio.v2 as imageio
import numpy as np
from PIL import Image
from tqdm import tqdm

from worldvla.config import parse_cli, save_config
from worldvla.data.conversations import scan, split_assignment
from worldvla.eval.video_metrics import evaluate_sets, write_metrics_report
from worldvla.policy.interface import PolicySource
from worldvla.policy.policy import WorldVLAPolicy

log = logging.getLogger("worldvla.imagine")
RYNNVLA_EVAL_PROMPT = "Generate the image based on the current image and the action."  # official_format.md §10.3


@dataclass
class ImagineConfig:
    renamed: ClassVar[dict[str, str]] = {"checkpoint": "policy.path", "tokenizer": "policy.tokenizer"}
    # the checkpoint folder (policy=CKPT; an official folder with policy.tokenizer, policy.recipe as in eval)
    policy: PolicySource = field(default_factory=PolicySource)
    data_dir: str = ""  # exported trajectories: <task>/trj_<i>/{action/action_j.npy, imgs/image_j.png}
    image_dir: str = "imgs"  # third-view image folder inside each trajectory
    wrist: bool = False  # bi-view world model: also roll out the wrist view (RynnVLA-002)
    wrist_dir: str = "imgs_wrist"  # wrist image folder inside each trajectory (with wrist=true)
    split: str = "val_ind"  # train | val_ind | val_ood | all (official 90/10 split)
    train_ratio: float = 0.9  # the split's ratio (data/conversations.py train_ratio, official 0.9)
    suite: str = "libero"  # label of the report
    horizon: int = 10  # imagined frames per trajectory
    start_frame: int = 0
    max_trajectories: int = 8
    batch_size: int = 4  # trajectories decoded together
    feed_back: str = "pixels"  # pixels: decode + re-encode each frame (as the official eval); tokens: reuse codes
    prompt: str = "train"  # train: the training prompt; rynnvla_eval: the RynnVLA-002 eval wording
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim"])  # + lpips, fvd (weights in metrics_dir)
    metrics_dir: str = "ckpts/metrics"
    min_frames: int = 2  # shortest clip scored (the papers use >= 10 frames for FVD)
    sensitivity: bool = False  # also imagine with shuffled-within-trajectory and zero actions; report the gap
    shuffle_seed: int = 0
    out_dir: str = "outputs/imagine"
    fps: int = 4
    device: str = "cpu"


def world_prompt(policy, view_tokens: list[list[int]], action: np.ndarray, wording: str) -> list[int]:
    """Prompt ids for one step: [BOS] prompt I(t) [I_wrist(t)] A(t) SEP (a world-model sample's human turn);
    `view_tokens` holds the image tokens of each view of frame t."""
    if wording not in ("train", "rynnvla_eval"):
        raise ValueError(f"prompt must be train or rynnvla_eval, got {wording!r}")
    return policy.world_prompt_from_tokens(view_tokens, action, RYNNVLA_EVAL_PROMPT if wording == "rynnvla_eval" else None)


def imagine_views(policy, start_views, actions: np.ndarray, feed_back: str = "pixels",
                  wording: str = "train") -> np.ndarray:
    """start_views (B, V, R, R, 3) uint8, V = 1 (third person) or 2 (third person, wrist); actions
    (B, H, 7) raw -> imagined frames (B, H, V, R, R, 3). Each step generates the V next images of
    every row in one constrained decode (`WorldVLAPolicy.imagine_tokens`)."""
    if feed_back not in ("pixels", "tokens"):
        raise ValueError(f"feed_back must be pixels or tokens, got {feed_back!r}")
    start_views = np.asarray(start_views)
    actions = np.asarray(actions, dtype=np.float64)
    b, horizon = actions.shape[:2]
    if start_views.ndim != 5 or len(start_views) != b:
        raise ValueError(f"start views {start_views.shape}: expected ({b}, views, R, R, 3) for {b} action sequences")
    views, res = start_views.shape[1], policy.resolution
    if views not in (1, 2):
        raise ValueError(f"{views} views per frame; the world model takes 1 (third person) or 2 (+ wrist)")
    flat = policy.frame_tokens(start_views.reshape(b * views, res, res, 3))
    tokens = [flat[i * views : (i + 1) * views] for i in range(b)]  # per row: one token list per view
    out = np.zeros((b, horizon, views, res, res, 3), dtype=np.uint8)
    for t in range(horizon):
        prompts = [world_prompt(policy, tokens[i], actions[i, t], wording) for i in range(b)]
        out[:, t], per_view = policy.imagine_tokens(prompts, views)
        if feed_back == "tokens":
            tokens = per_view
        else:
            flat = policy.frame_tokens(out[:, t].reshape(b * views, res, res, 3))
            tokens = [flat[i * views : (i + 1) * views] for i in range(b)]
    return out


def imagine_batch(policy, start_frames, actions: np.ndarray, feed_back: str = "pixels", wording: str = "train") -> np.ndarray:
    """start_frames: B third-person frames (R, R, 3) uint8; actions (B, H, 7) raw -> imagined frames (B, H, R, R, 3)."""
    frames = np.asarray(list(start_frames))
    if len(frames) != len(actions):
        raise ValueError(f"{len(frames)} start frames for {len(actions)} action sequences")
    return imagine_views(policy, frames[:, None], actions, feed_back, wording)[:, :, 0]


ACTION_VARIANTS = ("shuffled_actions", "zero_actions")  # the sensitivity rows, next to the true actions


def shuffled_actions(actions: np.ndarray, seed: int, name: str) -> np.ndarray:
    """The (H, 7) actions of one trajectory in a seeded random order that is never the identity (H >= 2);
    the seed mixes in the trajectory's name, so a trajectory gets the same order in any batch."""
    actions = np.asarray(actions)
    if len(actions) < 2:
        raise ValueError(f"{name}: shuffling needs at least 2 actions (horizon >= 2), got {len(actions)}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    order = rng.permutation(len(actions))
    if np.array_equal(order, np.arange(len(actions))):
        order = np.roll(order, 1)
    return actions[order]


def action_variants(actions: np.ndarray, names: list[str], seed: int) -> dict[str, np.ndarray]:
    """(B, H, 7) true actions -> {variant: (B, H, 7)} for ACTION_VARIANTS."""
    return {"shuffled_actions": np.stack([shuffled_actions(a, seed, n) for a, n in zip(actions, names)]),
            "zero_actions": np.zeros_like(actions)}


def view_dirs(cfg: ImagineConfig) -> list[str]:
    return [cfg.image_dir, cfg.wrist_dir] if cfg.wrist else [cfg.image_dir]


def load_trajectories(cfg: ImagineConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frames (T, V, R, R, 3), actions (T, 7)) for the split, T = horizon + 1 frames from
    start_frame, V views (third person, then wrist with `wrist=true`)."""
    tasks = scan(Path(cfg.data_dir), view_dirs(cfg), with_state=False)
    if cfg.split == "all":
        chosen = [(task, t.name) for task, trajs in tasks.items() for t in trajs]
    else:
        chosen = split_assignment(tasks, cfg.train_ratio).get(cfg.split)
        if chosen is None:
            raise ValueError(f"split must be train, val_ind, val_ood or all; got {cfg.split!r}")
    if not chosen:
        raise ValueError(f"{cfg.data_dir}: split {cfg.split!r} holds no trajectory (too few tasks/demos?)")
    lookup = {(task, t.name): t for task, trajs in tasks.items() for t in trajs}
    out = []
    for key in chosen[: cfg.max_trajectories]:
        traj = lookup[key]
        frames = traj.frames[cfg.start_frame : cfg.start_frame + cfg.horizon + 1]
        if len(frames) < 2:
            log.warning("%s/%s: fewer than 2 frames after start_frame, skipped", *key)
            continue
        imgs = np.stack([[np.asarray(Image.open(traj.path / d / f"image_{j}.png").convert("RGB")) for d in view_dirs(cfg)]
                         for j in frames])
        acts = np.stack([np.load(traj.path / "action" / f"action_{j}.npy") for j in frames])
        out.append((f"{key[0]}__{key[1]}", imgs, acts))
    return out


def save_strip(gt: np.ndarray, gen: np.ndarray, path: Path) -> None:
    """gt, gen (H, V, R, R, 3): per view a ground-truth row (frames 1..H) over an imagined row, one
    column per step; views stacked top to bottom (third person, then wrist)."""
    rows = [np.concatenate(list(clip[:, v]), axis=1) for v in range(gt.shape[1]) for clip in (gt, gen)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def save_gif(gt: np.ndarray, gen: np.ndarray, path: Path, fps: int) -> None:
    """One frame per step: truth | imagined side by side, views stacked top to bottom."""
    frames = [np.concatenate([np.concatenate([g[v], p[v]], axis=1) for v in range(len(g))], axis=0)
              for g, p in zip(gt, gen)]
    imageio.mimsave(path, frames, duration=1.0 / max(fps, 1), loop=0)


def run(cfg: ImagineConfig, policy=None, imagine=None) -> dict:
    """`imagine(start_views (B, V, R, R, 3), actions (B, H, 7)) -> (B, H, V, R, R, 3)` defaults to the
    policy's world model (`imagine_views`); tests pass toy world models here."""
    if imagine is None:
        if policy is None:
            if not cfg.policy.path:
                raise ValueError("policy=<checkpoint folder> is required")
            policy = WorldVLAPolicy.from_pretrained(cfg.policy.path, device=cfg.device, tokenizer=cfg.policy.tokenizer,
                                                    **cfg.policy.recipe)

        def imagine(start, acts):
            return imagine_views(policy, start, acts, cfg.feed_back, cfg.prompt)
    out = Path(cfg.out_dir)
    (out / "strips").mkdir(parents=True, exist_ok=True)
    trajs = load_trajectories(cfg)
    names, gts, gens = [], [], []
    variants: dict[str, list] = {v: [] for v in ACTION_VARIANTS} if cfg.sensitivity else {}
    bar = tqdm(total=len(trajs), desc="imagine" + (" (true, shuffled, zero actions)" if variants else ""), unit="traj")
    for i in range(0, len(trajs), cfg.batch_size):
        chunk = trajs[i : i + cfg.batch_size]
        h = min(len(f) for _, f, _ in chunk) - 1  # batch rows share one horizon
        start, acts = np.stack([f[0] for _, f, _ in chunk]), np.stack([a[:h] for _, _, a in chunk])
        imagined = imagine(start, acts)
        if variants:
            for variant, altered in action_variants(acts, [n for n, _, _ in chunk], cfg.shuffle_seed).items():
                variants[variant] += list(imagine(start, altered))
        for (name, frames, _), gen in zip(chunk, imagined):
            save_strip(frames[1 : h + 1], gen, out / "strips" / f"{name}.png")
            save_gif(frames[1 : h + 1], gen, out / "strips" / f"{name}.gif", cfg.fps)
            names.append(name)
            gts.append(frames[1 : h + 1])
            gens.append(gen)
        bar.update(len(chunk))
    bar.close()
    results = {}
    for v, label in enumerate(["inf", "inf_wrist"][: len(view_dirs(cfg))]):  # one report row per view
        sets = {label: [p[:, v] for p in gens], **{f"{label}_{k}": [p[:, v] for p in clips] for k, clips in variants.items()}}
        results.update(evaluate_sets([g[:, v] for g in gts], sets, metrics=cfg.metrics, metrics_dir=cfg.metrics_dir,
                                     min_frames=cfg.min_frames, clip_names=names))
    files = write_metrics_report(results, out, cfg.suite)
    summary = {"trajectories": names, "horizon": cfg.horizon, "views": view_dirs(cfg), "report": {k: str(v) for k, v in files.items()},
               "strips": str(out / "strips")}
    (out / "imagine_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %d strips/GIFs to %s and the metrics report to %s", len(names), out / "strips", out)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(ImagineConfig, argv, description=__doc__)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out_dir) / "imagine_config.yaml")
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

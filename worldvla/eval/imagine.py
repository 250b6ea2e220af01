"""World-model imagination: roll the world model forward from a frame and an action sequence.

    python -m worldvla.eval.imagine checkpoint=CKPT data_dir=DIR split=val_ind horizon=10 out_dir=OUT

For each trajectory of the split (exported layout `<task>/trj_<i>/{action,imgs}`, see data/README.md),
the first frame and the ground-truth actions drive an autoregressive rollout: at step t the prompt
is the world-model prompt with the current (imagined) frame and action t, and the next frame is
generated under the image-span constraints (`generate_image`). Trajectories are batched; each step
is one KV-cached constrained decode for the whole batch. Writes per trajectory a ground-truth vs
imagined strip (PNG) and GIF, and the video metrics (PSNR/SSIM, LPIPS/FVD with local weights) as
JSON, markdown table and plots against horizon.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image
from tqdm import tqdm

from worldvla.data.sequence import IMAGE, world_conversation
from worldvla.tokenizers.image import tokens_to_codes

log = logging.getLogger("worldvla.imagine")
RYNNVLA_EVAL_PROMPT = "Generate the image based on the current image and the action."  # official_format.md §10.3


@dataclass
class ImagineConfig:
    checkpoint: str = ""  # worldvla checkpoint folder (or official folder + tokenizer)
    tokenizer: str | None = None  # tokenizer folder for official checkpoints without one
    data_dir: str = ""  # exported trajectories: <task>/trj_<i>/{action/action_j.npy, imgs/image_j.png}
    image_dir: str = "imgs"  # third-view image folder inside each trajectory
    split: str = "val_ind"  # train | val_ind | val_ood | all (official 90/10 split)
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
    out_dir: str = "outputs/imagine"
    fps: int = 4
    device: str = "cpu"


def world_prompt(policy, frame_tokens: list[int], action: np.ndarray, wording: str) -> list[int]:
    """Prompt ids for one step: [BOS] prompt I(t) A(t) SEP (the human turn of a world-model sample)."""
    conv = world_conversation(1)
    if wording == "rynnvla_eval":
        conv[0] = {"from": "human", "value": RYNNVLA_EVAL_PROMPT + conv[0]["value"][conv[0]["value"].index(IMAGE):]}
    elif wording != "train":
        raise ValueError(f"prompt must be train or rynnvla_eval, got {wording!r}")
    return policy.world_builder.prompt(conv, [frame_tokens], actions=[action]).input_ids


def imagine_batch(policy, start_frames, actions: np.ndarray, feed_back: str = "pixels", wording: str = "train") -> np.ndarray:
    """start_frames: B frames (R, R, 3) uint8; actions (B, H, 7) raw -> imagined frames (B, H, R, R, 3)."""
    from worldvla.model.generate import generate_image

    if feed_back not in ("pixels", "tokens"):
        raise ValueError(f"feed_back must be pixels or tokens, got {feed_back!r}")
    actions = np.asarray(actions, dtype=np.float64)
    b, horizon = actions.shape[:2]
    if len(start_frames) != b:
        raise ValueError(f"{len(start_frames)} start frames for {b} action sequences")
    latent = policy.resolution // 16  # VQ-GAN downsampling
    tokens = policy.images.images_to_tokens(list(start_frames))
    out = np.zeros((b, horizon, policy.resolution, policy.resolution, 3), dtype=np.uint8)
    for t in range(horizon):
        prompts = [world_prompt(policy, tokens[i], actions[i, t], wording) for i in range(b)]
        spans = generate_image(policy.model, prompts, latent, latent, policy.image_ids, policy.action_mask).cpu().numpy()
        codes = np.stack([tokens_to_codes(s, policy.text.vocab) for s in spans])
        out[:, t] = policy.images.decode(codes)
        tokens = [s.tolist() for s in spans] if feed_back == "tokens" else policy.images.images_to_tokens(list(out[:, t]))
    return out


def load_trajectories(cfg: ImagineConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frames (T, R, R, 3), actions (T, 7)) for the split, T = horizon + 1 frames from start_frame."""
    from worldvla.data.conversations import scan, split_assignment

    tasks = scan(Path(cfg.data_dir), [cfg.image_dir], with_state=False)
    if cfg.split == "all":
        chosen = [(task, t.name) for task, trajs in tasks.items() for t in trajs]
    else:
        chosen = split_assignment(tasks).get(cfg.split)
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
        imgs = np.stack([np.asarray(Image.open(traj.path / cfg.image_dir / f"image_{j}.png").convert("RGB")) for j in frames])
        acts = np.stack([np.load(traj.path / "action" / f"action_{j}.npy") for j in frames])
        out.append((f"{key[0]}__{key[1]}", imgs, acts))
    return out


def save_strip(gt: np.ndarray, gen: np.ndarray, path: Path) -> None:
    """Top row ground truth (frames 1..H), bottom row imagined, one column per step."""
    top = np.concatenate(list(gt), axis=1)
    bottom = np.concatenate(list(gen), axis=1)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(path)


def save_gif(gt: np.ndarray, gen: np.ndarray, path: Path, fps: int) -> None:
    frames = [np.concatenate([g, p], axis=1) for g, p in zip(gt, gen)]  # side by side: truth | imagined
    imageio.mimsave(path, frames, duration=1.0 / max(fps, 1), loop=0)


def run(cfg: ImagineConfig, policy=None) -> dict:
    from worldvla.eval.policy import WorldVLAPolicy
    from worldvla.eval.video_metrics import evaluate_sets, write_metrics_report

    if policy is None:
        if not cfg.checkpoint:
            raise ValueError("checkpoint=<folder> is required")
        policy = WorldVLAPolicy.from_pretrained(cfg.checkpoint, device=cfg.device, tokenizer=cfg.tokenizer)
    out = Path(cfg.out_dir)
    (out / "strips").mkdir(parents=True, exist_ok=True)
    trajs = load_trajectories(cfg)
    names, gts, gens = [], [], []
    bar = tqdm(total=len(trajs), desc="imagine", unit="traj")
    for i in range(0, len(trajs), cfg.batch_size):
        chunk = trajs[i : i + cfg.batch_size]
        h = min(len(f) for _, f, _ in chunk) - 1  # batch rows share one horizon
        imagined = imagine_batch(policy, [f[0] for _, f, _ in chunk], np.stack([a[:h] for _, _, a in chunk]),
                                 cfg.feed_back, cfg.prompt)
        for (name, frames, _), gen in zip(chunk, imagined):
            save_strip(frames[1 : h + 1], gen, out / "strips" / f"{name}.png")
            save_gif(frames[1 : h + 1], gen, out / "strips" / f"{name}.gif", cfg.fps)
            names.append(name)
            gts.append(frames[1 : h + 1])
            gens.append(gen)
        bar.update(len(chunk))
    bar.close()
    results = evaluate_sets(gts, {"inf": gens}, metrics=cfg.metrics, metrics_dir=cfg.metrics_dir,
                            min_frames=cfg.min_frames, clip_names=names)
    files = write_metrics_report(results, out, cfg.suite)
    summary = {"trajectories": names, "horizon": cfg.horizon, "report": {k: str(v) for k, v in files.items()},
               "strips": str(out / "strips")}
    (out / "imagine_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %d strips/GIFs to %s and the metrics report to %s", len(names), out / "strips", out)
    return results


def main(argv: list[str] | None = None) -> int:
    from worldvla.config import parse_cli, save_config

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(ImagineConfig, argv, description=__doc__)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.out_dir) / "imagine_config.yaml")
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

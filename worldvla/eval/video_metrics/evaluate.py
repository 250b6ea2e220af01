"""World-model evaluation over a set of clips: per-frame PSNR / SSIM / LPIPS (+ MSE), aggregated per
frame index (horizon) and per clip, and FVD over whole clips (optionally over clip prefixes).

Clip protocol (official `calculate_world_model_performance.py`): the ground-truth clip and every
generated clip of the same trajectory are truncated to their common minimum length; each frame is
resized to 256x256 with area interpolation and scaled to [0, 1]; a clip's PSNR/SSIM/LPIPS is the mean
over its frames and a set's value the mean over clips; FVD uses one I3D feature per whole clip.
The official script drops trajectories of 21 frames or fewer; here `min_frames` (default 10, the
shortest clip the I3D protocol is documented for) is explicit and the dropped clips are listed.

Horizon h (1-based) is the number of frames since the start of the clip: the per-frame curves give
the metric of frame h - 1, and FVD at horizon h uses the first h frames of every clip that long.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from . import image as I
from .fvd import FVD_EPS, I3D, I3D_KWARGS, FeatureStats, frechet_distance, load_i3d
from .lpips import LPIPS, load_lpips, lpips_distance

METRICS = ("psnr", "ssim", "lpips", "fvd")
FRAME_METRICS = ("mse", "psnr", "ssim", "lpips")
MIN_FRAMES = 10
OFFICIAL_MIN_FRAMES = 22  # official script: `if min_len <= 21: skip`


@torch.no_grad()
def frame_metrics(gt: torch.Tensor, gen: torch.Tensor, lpips: LPIPS | None = None,
                  batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-frame metrics of two preprocessed clips (T, 3, H, W) in [0, 1]. LPIPS only if a model is given."""
    out: dict[str, list] = {k: [] for k in ("mse", "psnr", "ssim")}
    for i in range(0, gt.shape[0], batch_size):
        a, b = gt[i:i + batch_size], gen[i:i + batch_size]
        out["mse"].append(I.mse(a, b))
        out["psnr"].append(I.psnr(a, b))
        out["ssim"].append(I.ssim(a, b))
    res = {k: torch.cat(v).double().cpu().numpy() for k, v in out.items()}
    if lpips is not None:
        res["lpips"] = lpips_distance(lpips, gt, gen, batch_size).double().numpy()
    return res


def _per_frame_mean(curves: list[np.ndarray]) -> tuple[list[float], list[int]]:
    """Mean over clips at each frame index (clips may differ in length) and the clip count per index."""
    longest = max(len(c) for c in curves)
    means, counts = [], []
    for t in range(longest):
        vals = [c[t] for c in curves if len(c) > t]
        means.append(float(np.mean(vals)))
        counts.append(len(vals))
    return means, counts


def evaluate_sets(gt_clips: Sequence[np.ndarray], generated: Mapping[str, Sequence[np.ndarray]], *,
                  metrics: Sequence[str] = METRICS, lpips: LPIPS | None = None, i3d: I3D | None = None,
                  metrics_dir: str | os.PathLike | None = None, size: int = I.EVAL_SIZE,
                  min_frames: int = MIN_FRAMES, fvd_horizons: Sequence[int] | None = None,
                  batch_size: int = 16, device: str | torch.device = "cpu",
                  clip_names: Sequence[str] | None = None) -> dict[str, dict]:
    """Compare several generated sets (e.g. {"gt_recons": ..., "inf": ...}) with one ground-truth set.

    gt_clips[i] and generated[k][i] are uint8 (T, H, W, 3) clips of the same trajectory. `metrics`
    selects what is computed; a selected network that is not passed is loaded from `metrics_dir`
    (missing weights raise, they are never skipped). Returns {set name: result dict} (see
    `write_metrics_report` for the layout)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    for name, clips in generated.items():
        if len(clips) != len(gt_clips):
            raise ValueError(f"set {name!r} has {len(clips)} clips, ground truth has {len(gt_clips)}")
    if not generated:
        raise ValueError("no generated set to evaluate")
    if "lpips" in metrics and lpips is None:
        lpips = load_lpips(metrics_dir=metrics_dir, device=device)
    if "fvd" in metrics and i3d is None:
        i3d = load_i3d(metrics_dir=metrics_dir, device=device)
    lpips = lpips if "lpips" in metrics else None
    i3d = i3d if "fvd" in metrics else None
    horizons = sorted({int(h) for h in (fvd_horizons or []) if int(h) >= 1}) if "fvd" in metrics else []
    names = list(clip_names) if clip_names is not None else [f"clip_{i:04d}" for i in range(len(gt_clips))]

    kinds = list(generated)
    per_clip: dict[str, list[dict]] = {k: [] for k in kinds}
    curves: dict[str, dict[str, list[np.ndarray]]] = {k: {m: [] for m in FRAME_METRICS} for k in kinds}
    stats = {k: {"full": FeatureStats(), **{h: FeatureStats() for h in horizons}} for k in ["__gt__", *kinds]}
    skipped = []
    for i in range(len(gt_clips)):
        gt = np.asarray(gt_clips[i])
        gens = {k: np.asarray(generated[k][i]) for k in kinds}
        length = min([len(gt), *(len(g) for g in gens.values())])
        if length < min_frames:
            skipped.append({"clip": names[i], "frames": int(length)})
            continue
        gt_t = I.preprocess_clip(gt[:length], size, device)
        clips_t = {"__gt__": gt_t}
        for k in kinds:
            gen_t = I.preprocess_clip(gens[k][:length], size, device)
            clips_t[k] = gen_t
            fm = frame_metrics(gt_t, gen_t, lpips, batch_size)
            row = {"clip": names[i], "frames": int(length)}
            for m, v in fm.items():
                curves[k][m].append(v)
                row[m] = float(v.mean())
            per_clip[k].append(row)
        if i3d is not None:
            for k, clip in clips_t.items():
                stats[k]["full"].append(i3d(clip[None]))
                for h in horizons:
                    if h <= length:
                        stats[k][h].append(i3d(clip[None, :h]))
    if not per_clip[kinds[0]]:
        raise ValueError(f"no clip has >= {min_frames} frames in common ({len(skipped)} skipped)")

    protocol = {
        "resize": f"{size}x{size}, area interpolation (cv2.INTER_AREA / exact box mean), scaled to [0, 1]",
        "psnr": {"epsilon": I.PSNR_EPSILON, "value_range": I.VALUE_RANGE},
        "ssim": {"window": I.SSIM_WINDOW, "sigma": I.SSIM_SIGMA, "k1": I.SSIM_K1, "k2": I.SSIM_K2,
                 "padding": "valid", "channels": 3},
        "lpips": "VGG16, v0.1 linear layers, inputs mapped to [-1, 1]",
        "fvd": {"i3d_kwargs": I3D_KWARGS, "input": "(1, 3, T, H, W) x 255", "covariance": "population (1/N)",
                "eps": FVD_EPS, "sqrtm": "scipy.linalg.sqrtm, real part"},
        "averaging": "per clip: mean over frames; per set: mean over clips; per frame index: mean over clips",
        "truncation": "each trajectory truncated to the shortest of its clips",
        "min_frames": min_frames,
    }
    sources = {}
    if lpips is not None:
        sources.update(lpips.sources)
    if i3d is not None:
        sources["i3d"] = i3d.source

    results = {}
    for k in kinds:
        summary, per_frame = {}, {}
        for m in FRAME_METRICS:
            if curves[k][m]:
                summary[m] = float(np.mean([row[m] for row in per_clip[k]]))
                per_frame[m], per_frame["count"] = _per_frame_mean(curves[k][m])
        fvd_by_horizon = {}
        if i3d is not None:
            summary["fvd"] = frechet_distance(*stats["__gt__"]["full"].mean_cov(), *stats[k]["full"].mean_cov())
            for h in horizons:
                if stats[k][h].n:
                    fvd = frechet_distance(*stats["__gt__"][h].mean_cov(), *stats[k][h].mean_cov())
                    fvd_by_horizon[str(h)] = {"fvd": fvd, "clips": stats[k][h].n}
        results[k] = {
            "set": k, "num_clips": len(per_clip[k]), "skipped": skipped, "metrics": list(metrics),
            "summary": summary, "per_frame": per_frame, "fvd_by_horizon": fvd_by_horizon,
            "per_clip": per_clip[k], "protocol": protocol, "weights": sources,
        }
    return results


def evaluate_clips(gt_clips: Sequence[np.ndarray], gen_clips: Sequence[np.ndarray], **kwargs) -> dict:
    """`evaluate_sets` for a single generated set."""
    return evaluate_sets(gt_clips, {"generated": gen_clips}, **kwargs)["generated"]


# ---------------------------------------------------------------------------------------------------
# videos on disk (official naming: "...--episode=<id>...--success=<gt|gt_recons|inf>--...mp4")

def read_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video as uint8 (T, H, W, 3) RGB (OpenCV, as the official reader; else imageio)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        cap = cv2.VideoCapture(path)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        cap.release()
    else:
        with imageio.get_reader(path) as reader:
            frames = [np.asarray(f)[..., :3] for f in reader]
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    return np.stack(frames)


class LazyVideos(Sequence):
    """A sequence of video files decoded on access (keeps one clip in memory at a time)."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return read_video(self.paths[i])


_EPISODE = re.compile(r"(--episode=.*)")


def find_official_videos(folder: str | os.PathLike, kinds: Sequence[str] = ("gt_recons", "inf")
                         ) -> tuple[list[str], list[Path], dict[str, list[Path]]]:
    """Pair the MP4s of an official world-model rollout folder: returns (names, gt paths, {kind: paths}),
    keeping only trajectories for which every kind exists (sorted by name, as the official script)."""
    files = {}
    for p in sorted(Path(folder).glob("*.mp4")):
        m = _EPISODE.search(p.name)
        if m:
            files[m.group(1)] = p
    names, gts, gens = [], [], {k: [] for k in kinds}
    for suffix in sorted(s for s in files if "--success=gt--" in s):
        others = {k: files.get(suffix.replace("--success=gt--", f"--success={k}--")) for k in kinds}
        if all(others.values()):
            names.append(suffix)
            gts.append(files[suffix])
            for k in kinds:
                gens[k].append(others[k])
    return names, gts, gens

"""Evaluate a folder of official-format world-model MP4s and write the report.

    python -m worldvla.eval.video_metrics ROLLOUT_DIR --suite libero_goal_val_ind --out-dir OUT \
        [--metrics-dir ckpts/metrics] [--i3d PATH] [--lpips-lin PATH] [--vgg16 PATH] \
        [--kinds gt_recons inf] [--fvd-horizons 10 20 30] [--min-frames 10] [--device cpu]

Files are paired by their "--episode=..." suffix, "--success=gt--" against "--success=<kind>--".
"""

from __future__ import annotations

import argparse
import sys

from .evaluate import METRICS, MIN_FRAMES, LazyVideos, evaluate_sets, find_official_videos
from .fvd import load_i3d
from .lpips import load_lpips
from .report import write_metrics_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m worldvla.eval.video_metrics", description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--suite", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--metrics-dir", default=None, help="folder with vgg.pth, vgg16-397923af.pth, i3d_torchscript.pt")
    p.add_argument("--i3d", default=None)
    p.add_argument("--lpips-lin", default=None)
    p.add_argument("--vgg16", default=None)
    p.add_argument("--kinds", nargs="+", default=["gt_recons", "inf"])
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--fvd-horizons", nargs="*", type=int, default=[])
    p.add_argument("--min-frames", type=int, default=MIN_FRAMES)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    names, gts, gens = find_official_videos(args.folder, args.kinds)
    if not names:
        print(f"no paired '--success=gt--' videos found in {args.folder}", file=sys.stderr)
        return 1
    lpips = load_lpips(args.lpips_lin, args.vgg16, args.metrics_dir, args.device) if "lpips" in args.metrics else None
    i3d = load_i3d(args.i3d, args.metrics_dir, args.device) if "fvd" in args.metrics else None
    results = evaluate_sets(LazyVideos(gts), {k: LazyVideos(v) for k, v in gens.items()}, metrics=args.metrics,
                            lpips=lpips, i3d=i3d, size=args.size, min_frames=args.min_frames,
                            fvd_horizons=args.fvd_horizons, device=args.device, clip_names=names)
    paths = write_metrics_report(results, args.out_dir, args.suite)
    print(paths["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

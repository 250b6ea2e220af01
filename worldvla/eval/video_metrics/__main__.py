"""Evaluate a folder of official-format world-model MP4s and write the report.

    python -m worldvla.eval.video_metrics ROLLOUT_DIR suite=libero_goal_val_ind out_dir=OUT \
        [metrics_dir=ckpts/metrics] [i3d=PATH] [i3d_sha256=HEX] [lpips_lin=PATH] [vgg16=PATH] \
        [kinds=[gt_recons,inf]] [fvd_horizons=[10,20,30]] [min_frames=10] [device=cpu]
    (or: worldvla metrics ...; `--out-dir OUT` is the same as `out_dir=OUT`)

Files are paired by their "--episode=..." suffix, "--success=gt--" against "--success=<kind>--".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from worldvla.config import ConfigError, parse_cli
from worldvla.errors import InputFileError, exit_on_input_errors

from .evaluate import METRICS, MIN_FRAMES, LazyVideos, evaluate_sets, find_official_videos
from .fvd import load_i3d
from .lpips import load_lpips
from .report import write_metrics_report


@dataclass
class VideoMetricsConfig:
    folder: str = field(default="", metadata={"help": "folder of official rollout MP4s (also the first bare word)"})
    suite: str = field(default="", metadata={"help": "name of the report, e.g. libero_goal_val_ind"})
    out_dir: str = ""
    metrics_dir: str | None = field(default=None, metadata={
        "help": "folder with vgg.pth, vgg16-397923af.pth, i3d_torchscript.pt"})
    i3d: str | None = None
    i3d_sha256: str | None = field(default=None, metadata={
        "help": "load an I3D file with exactly this sha256 instead of the published one (TorchScript runs code: "
                "only for a file you checked)"})
    lpips_lin: str | None = None
    vgg16: str | None = None
    kinds: list[str] = field(default_factory=lambda: ["gt_recons", "inf"])
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    fvd_horizons: list[int] = field(default_factory=list)
    min_frames: int = MIN_FRAMES
    size: int = 256
    device: str = "cpu"

    def validate(self) -> None:
        missing = [name for name in ("folder", "suite", "out_dir") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"set {', '.join(f'{m}=...' for m in missing)} (see --help)")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ConfigError(f"metrics: unknown {unknown}; choose from {list(METRICS)}")


def _main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(VideoMetricsConfig, argv, description=__doc__, positional="folder")
    cfg.validate()
    names, gts, gens = find_official_videos(cfg.folder, cfg.kinds)
    if not names:
        raise InputFileError(cfg.folder, "no paired '--success=gt--' videos found here")
    lpips = load_lpips(cfg.lpips_lin, cfg.vgg16, cfg.metrics_dir, cfg.device) if "lpips" in cfg.metrics else None
    i3d = load_i3d(cfg.i3d, cfg.metrics_dir, cfg.device, cfg.i3d_sha256) if "fvd" in cfg.metrics else None
    results = evaluate_sets(LazyVideos(gts), {k: LazyVideos(v) for k, v in gens.items()}, metrics=cfg.metrics,
                            lpips=lpips, i3d=i3d, size=cfg.size, min_frames=cfg.min_frames,
                            fvd_horizons=cfg.fvd_horizons, device=cfg.device, clip_names=names)
    paths = write_metrics_report(results, cfg.out_dir, cfg.suite)
    print(paths["markdown"].read_text())
    return 0


main = exit_on_input_errors(_main)  # a bad value, an unsafe or bad weight file, no videos: one line, exit status 2


if __name__ == "__main__":
    sys.exit(main())

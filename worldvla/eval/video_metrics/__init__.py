"""World-model video metrics (issue 8): PSNR, SSIM, LPIPS-VGG and FVD (StyleGAN-V I3D), following the
official RynnVLA-002 `calculate_world_model_performance.py` protocol; see docs/world_model_metrics.md.

No weights are downloaded: LPIPS and I3D weights are explicit local files (default `ckpts/metrics/`).
"""

from .evaluate import (
    FRAME_METRICS,
    METRICS,
    MIN_FRAMES,
    LazyVideos,
    evaluate_clips,
    evaluate_sets,
    find_official_videos,
    frame_metrics,
    read_video,
)
from .fvd import FVD_EPS, I3D, I3D_KWARGS, FeatureStats, frechet_distance, fvd_from_features, load_i3d
from .image import gaussian_window, mse, preprocess_clip, psnr, resize_area, ssim, to_unit
from .lpips import LPIPS, load_lpips, lpips_distance
from .report import markdown_table, plot_metric, write_metrics_report
from .weights import DEFAULT_METRICS_DIR, MissingWeightsError, sha256_file

__all__ = [
    "DEFAULT_METRICS_DIR", "FRAME_METRICS", "FVD_EPS", "I3D", "I3D_KWARGS", "LPIPS", "METRICS", "MIN_FRAMES",
    "FeatureStats", "LazyVideos", "MissingWeightsError", "evaluate_clips", "evaluate_sets", "find_official_videos",
    "frame_metrics", "frechet_distance", "fvd_from_features", "gaussian_window", "load_i3d", "load_lpips",
    "lpips_distance", "markdown_table", "mse", "plot_metric", "preprocess_clip", "psnr", "read_video",
    "resize_area", "sha256_file", "ssim", "to_unit", "write_metrics_report",
]

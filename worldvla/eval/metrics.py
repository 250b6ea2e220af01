"""World-model metrics (PSNR / SSIM / LPIPS / FVD): see `worldvla.eval.video_metrics`."""

from worldvla.eval.video_metrics import *
from worldvla.eval.video_metrics import __all__  # noqa: F401

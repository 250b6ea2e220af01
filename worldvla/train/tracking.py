"""Run logging: JSONL (always), wandb (optional, lazily imported, offline by default), tqdm, MFU, loss plot.

Only the main process logs. `train_log.jsonl` has one JSON object per logged step
({"step", "epoch", "lr", "loss", "action_ce", "world_ce", "z_loss", "action_l1" (continuous head), "tokens_per_s",
"mfu", ...});
`step` counts the updates done, so a checkpoint of step S holds the update logged as step S. The file is
append-only: a run that starts in a folder with a log (resumed from step S, or fresh: S = 0) appends
{"resumed_at_step": S}, and `read_log` drops the earlier lines past S (written after that save by the
interrupted run), so no history is ever lost and the file still reads as one curve.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from tqdm import tqdm

from worldvla.config import to_dict
# wandb (the wandb extra) and matplotlib (slow, only for the loss plot) are imported where used.

log = logging.getLogger("worldvla.train")

LOG_FILE = "train_log.jsonl"
RESUME_KEY = "resumed_at_step"  # the marker line of a run that started again in the same folder
PLOT_FILE = "loss_curve.png"

# Dense bf16 peak TFLOP/s per device (vendor datasheets), for the MFU estimate.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "A6000": 155.0, "4090": 165.0}


def guess_peak_tflops() -> float:
    """bf16 peak of the current GPU from its name; 0 (unknown: no MFU) on CPU or unlisted devices."""
    if not torch.cuda.is_available():
        return 0.0
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops
    return 0.0


def flops_per_token(n_params: int, n_layers: int, dim: int, seq_len: float) -> float:
    """Training FLOPs per token: 6 N (matmuls, forward + backward) + 12 L d T (attention scores and
    values, forward + backward), the usual MFU convention (activation recomputation not counted)."""
    return 6.0 * n_params + 12.0 * n_layers * dim * seq_len


class RunLogger:
    def __init__(self, out_dir: Path, cfg, is_main: bool, total_steps: int, resume_step: int = 0):
        self.is_main = is_main
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOG_FILE
        self.wandb = None
        self.bar = None
        if not is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._mark_resume(resume_step)
        lg = cfg.logging
        if lg.wandb and lg.wandb_mode != "disabled":
            self.wandb = self._init_wandb(cfg)
        if lg.progress_bar:
            self.bar = tqdm(total=total_steps, initial=resume_step, desc="train", unit="step", dynamic_ncols=True)

    def _mark_resume(self, resume_step: int) -> None:
        """Append the resume marker to an existing log; never rewrite it (its history stays)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"  # a line cut by a kill: end it, so the marker is a line of its own
        with open(self.path, "a") as f:
            f.write(("\n" if cut else "") + json.dumps({RESUME_KEY: int(resume_step)}) + "\n")

    def _init_wandb(self, cfg):
        try:
            import wandb
        except ImportError:
            log.info("wandb is not installed: logging to %s only (pip install 'worldvla[wandb]' to enable it)", self.path)
            return None

        os.environ.setdefault("WANDB_DIR", str(self.out_dir))
        name = cfg.logging.run_name or Path(cfg.train.output_dir).name
        return wandb.init(project=cfg.logging.project, name=name, mode=cfg.logging.wandb_mode, config=to_dict(cfg),
                          dir=str(self.out_dir), id=name.replace("/", "_"), resume="allow")

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.bar is not None:
            self.bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "action_ce", "world_ce", "action_l1") if k in record
                                  and record[k] is not None and not math.isnan(record[k])}, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def info(self, msg: str, *args) -> None:
        if self.is_main:
            if self.bar is not None:
                self.bar.write(msg % args if args else msg)
            else:
                log.info(msg, *args)

    def close(self, plot: bool = True) -> Path | None:
        if not self.is_main:
            return None
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        return plot_losses(self.path, self.out_dir / PLOT_FILE) if plot else None


def read_log(path: str | Path) -> list[dict]:
    """The logged records as one curve: at each resume marker the earlier records past its step are
    dropped (the interrupted run's lines after the checkpoint it resumed from); cut lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get(RESUME_KEY), int):
            out = [r for r in out if r.get("step", 0) <= rec[RESUME_KEY]]
            continue
        out.append(rec)
    return out


def plot_losses(log_path: str | Path, png: str | Path) -> Path | None:
    """Total / action / world / z-loss (and validation points) over steps, one panel per term."""
    records = [r for r in read_log(log_path) if "loss" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [k for k in ("loss", "action_ce", "world_ce", "z_loss", "action_l1") if any(r.get(k) is not None for r in records)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    for ax, key in zip(axes[0], terms):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), lw=1, label="train")
        val = [(r["step"], r[f"val_{key}"]) for r in read_log(log_path) if r.get(f"val_{key}") is not None]
        if val:
            ax.plot(*zip(*val), "o-", ms=3, label="val")
            ax.legend(fontsize=7)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png

#!/usr/bin/env python
"""Pretokenize throughput with the tiny VQ-GAN: samples/s per core for action + world conversations.

Builds a synthetic export folder (smooth random frames, official layout), generates the WorldVLA
conversations (his 2, K 5, world his 1) and times `pretokenize` with `workers` processes of one
torch thread each. Prints one markdown table row per resolution.

    python benchmarks/pretokenize.py                       # 256 and 512 px, 1 worker
    python benchmarks/pretokenize.py resolutions=[256] workers=2 n_traj=8
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from worldvla.config import parse_cli
from worldvla.recipe import Recipe


@dataclass
class BenchConfig:
    resolutions: list[int] = field(default_factory=lambda: [256, 512])
    n_traj: int = 2  # trajectories (one task)
    n_frames: int = 20  # frames per trajectory
    workers: int = 1  # pretokenize processes (one torch thread each)
    shard_size: int = 16
    seed: int = 0
    keep: bool = False  # keep the temporary folder


def write_export(base: Path, res: int, n_traj: int, n_frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for t in range(n_traj):
        trj = base / "bench_task" / f"trj_{t}"
        (trj / "imgs").mkdir(parents=True)
        (trj / "action").mkdir(parents=True)
        for j in range(n_frames):
            coarse = rng.integers(0, 256, (res // 32, res // 32, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((res, res), Image.BILINEAR)
            img.save(trj / "imgs" / f"image_{j}.png")
            np.save(trj / "action" / f"action_{j}.npy", rng.uniform(-0.5, 0.5, 7))


def run(cfg: BenchConfig, res: int, root: Path) -> dict:
    from worldvla.data.conversations import ConversationsConfig, generate
    from worldvla.data.pretokenize import PretokenizeConfig, TokenizerOptions, pretokenize
    from worldvla.testing.fixtures import make_tiny_assets

    assets = make_tiny_assets(root / "assets")
    write_export(root / f"exp{res}", res, cfg.n_traj, cfg.n_frames, cfg.seed)
    files = generate(ConversationsConfig(base_dir=root / f"exp{res}", output_dir=root / f"convs{res}", train_ratio=1.0, recipe=Recipe(resolution=res)))
    inputs = [files["train"]["world"], files["train"]["action"]]
    n = sum(len(json.loads(p.read_text())) for p in inputs)
    t0 = time.perf_counter()
    m = pretokenize(PretokenizeConfig(inputs=inputs, out_dir=root / f"tok{res}", workers=cfg.workers,
                                      shard_size=cfg.shard_size, tokenizer=TokenizerOptions(path=assets.root, resolution=res)))
    wall = time.perf_counter() - t0
    images = cfg.n_traj * cfg.n_frames
    build = m["timing"]["shard_seconds_sum"]  # phase 2 (samples from cached frames), summed over workers
    return {"res": res, "samples": n, "tokens": m["n_tokens"], "images": images, "wall": wall,
            "per_core": n / wall / cfg.workers, "img_per_core": images / wall / cfg.workers,
            "build_per_core": n / max(build, 1e-9)}


def main(argv=None) -> None:
    import logging

    import torch

    cfg = parse_cli(BenchConfig, argv, description=__doc__)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="worldvla_bench_pretok_"))
    try:
        print("| resolution | samples | tokens | unique frames | workers | wall s | samples/s per core (all) "
              "| unique frames/s per core (all) | samples/s per core (build from cached frames) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for res in cfg.resolutions:
            r = run(cfg, res, root)
            print(f"| {res} | {r['samples']} | {r['tokens']} | {r['images']} | {cfg.workers} | {r['wall']:.1f} | "
                  f"{r['per_core']:.2f} | {r['img_per_core']:.2f} | {r['build_per_core']:.0f} |", flush=True)
    finally:
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

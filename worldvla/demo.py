"""The whole WorldVLA pipeline on an embedded default, on CPU, in minutes.

    bash exps/demo.sh [key=value ...]        (or: python -m worldvla.demo [key=value ...])

Stages (each through the same CLI a full-scale user runs; a finished stage is skipped on rerun):
  1. record     scripted-expert demos in LIBERO -> raw LIBERO demo HDF5        libero_util/record_scripted_demos.py
  2. regenerate replay at the demo resolution, no-op filter, export PNG/npy    libero_util/regenerate.py
  3. convs      action (M=2, K) and world samples, official splits             data/conversations.py
  4. tokens     tiny tokenizer assets (official formats), shards, concatenation data/pretokenize.py, data/concatenate.py
  5. train      tiny Chameleon, action mask, official loss                      python -m worldvla.train (configs/tiny.yaml)
  6. eval       LIBERO rollouts of the demo tasks, 2 workers, videos            python -m worldvla.eval.libero
  7. imagine    world-model rollouts vs ground truth, GIFs, metrics            python -m worldvla.eval.imagine
and a report folder `<out>/report/` with the loss curve, videos, GIFs and summary.md.
The tiny model and VQ-GAN are random-initialised and trained for minutes: the numbers show that every
stage runs, not what WorldVLA reaches (see README: from the demo to the real thing).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("worldvla.demo")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class DemoConfig:
    out: str = "outputs/demo"  # everything the demo writes
    suite: str = "libero_object"  # tasks the scripted expert solves (docs/scripted_expert.md)
    tasks: str = "0"  # comma list of task ids
    episodes: str = "0-5"  # init states recorded per task (only successes are kept)
    resolution: int = 128  # render / model resolution (multiple of 32)
    chunk_size: int = 5  # K
    train_steps: int = 300  # tiny-model optimizer steps
    eval_trials: int = 2  # LIBERO episodes per task in the eval stage
    eval_max_steps: int = 120  # policy steps per eval episode (protocol value is 280 for object)
    workers: int = 2  # simulator processes (regenerate, eval)
    horizon: int = 6  # imagined frames per trajectory
    imagine_trajectories: int = 2


def _run(stage: str, args: list[str], done: Path | None = None) -> float:
    """Run one stage's CLI in a subprocess (its own progress bars); skip when `done` exists."""
    if done is not None and done.exists():
        log.info("[%s] already done (%s), skipped", stage, done)
        return 0.0
    log.info("[%s] %s", stage, " ".join(args))
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"[demo] stage {stage} failed (exit {res.returncode}); rerun the demo to resume from it")
    return time.time() - t0


def _first(pattern_dir: Path, pattern: str) -> Path:
    found = sorted(pattern_dir.glob(pattern))
    if not found:
        raise SystemExit(f"[demo] expected {pattern} in {pattern_dir}")
    return found[-1]


def run(cfg: DemoConfig) -> Path:
    out = Path(cfg.out).resolve()
    raw, h5, export, convs, tokens = (out / d for d in ("raw", "regenerated", "export", "convs", "tokens"))
    train_dir, eval_dir, imagine_dir, report = (out / d for d in ("train", "eval", "imagine", "report"))
    short = cfg.suite.removeprefix("libero_")
    times: dict[str, float] = {}

    times["record"] = _run("record", [
        "libero_util/record_scripted_demos.py", f"suite={cfg.suite}", f"tasks={cfg.tasks}",
        f"episodes={cfg.episodes}", f"out={raw}", "resolution=128"], raw / "success_report.json")
    times["regenerate"] = _run("regenerate", [
        "libero_util/regenerate.py", f"suite={cfg.suite}", f"raw_dir={raw}", f"out_dir={h5}",
        f"resolution={cfg.resolution}", f"workers={cfg.workers}", f"export_dir={export}"], h5 / f"{cfg.suite}_metainfo.json")
    times["convs"] = _run("convs", [
        "data/conversations.py", f"base_dir={export}", f"output_dir={convs}", f"task_name={short}",
        f"resolution={cfg.resolution}", "his=2", f"len_action={cfg.chunk_size}"], convs / ".done")
    (convs / ".done").touch()

    assets_dir = out / "assets"
    if not (assets_dir / "tokenizer" / "vqgan.ckpt").exists():
        from worldvla.testing.fixtures import make_tiny_assets

        make_tiny_assets(assets_dir)
    tok_dir = assets_dir / "tokenizer"
    action_json = convs / f"libero_{short}_his_2_train_img_only_ck_{cfg.chunk_size}_{cfg.resolution}.json"
    world_json = convs / f"libero_{short}_his_1_train_a2i_{cfg.resolution}.json"
    common = [f"tokenizer.path={tok_dir}", f"tokenizer.resolution={cfg.resolution}", f"frame_cache={tokens / 'frames'}"]
    times["pretokenize"] = _run("pretokenize-world", ["data/pretokenize.py", f"inputs=[{world_json}]",
                                                      f"out_dir={tokens / 'world'}", *common])
    times["pretokenize"] += _run("pretokenize-action", ["data/pretokenize.py", f"inputs=[{action_json}]",
                                                        f"out_dir={tokens / 'action'}", *common])
    train_set = tokens / f"libero_{short}_his_2_train_img_only_ck_{cfg.chunk_size}_a2i_{cfg.resolution}.json"
    times["concat"] = _run("concat", ["data/concatenate.py", f"inputs=[{tokens / 'world'},{tokens / 'action'}]",
                                      f"output={train_set}"], train_set)

    times["train"] = _run("train", [
        "-m", "worldvla.train", "--config", "configs/tiny.yaml", f"data.train=[{train_set}]",
        f"data.tokenizer={tok_dir}", f"data.resolution={cfg.resolution}", f"data.chunk_size={cfg.chunk_size}",
        f"train.output_dir={train_dir}", f"train.max_steps={cfg.train_steps}", "logging.wandb=false"])
    ckpt = _first(train_dir / "checkpoints", "step_*")

    times["eval"] = _run("eval", [
        "-m", "worldvla.eval.libero", f"policy={ckpt}", f"suites=[{cfg.suite}]", f"tasks=[{cfg.tasks}]",
        f"num_trials={cfg.eval_trials}", f"max_steps={cfg.eval_max_steps}", f"num_workers={cfg.workers}",
        f"output_dir={eval_dir}", "videos=all", "video_fps=20"])
    times["imagine"] = _run("imagine", [
        "-m", "worldvla.eval.imagine", f"checkpoint={ckpt}", f"data_dir={export}", "split=all",
        f"horizon={cfg.horizon}", f"max_trajectories={cfg.imagine_trajectories}", f"suite={cfg.suite}",
        f"out_dir={imagine_dir}"])
    return write_report(cfg, out, report, ckpt, times)


def write_report(cfg: DemoConfig, out: Path, report: Path, ckpt: Path, times: dict) -> Path:
    """Collect the pictures into `report/` and write summary.md."""
    report.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in [*(out / "train").glob("loss_curve.png"), *sorted((out / "eval").rglob("*.mp4"))[:4],
                *sorted((out / "imagine" / "strips").glob("*"))[:4], *sorted((out / "imagine").glob("*.png"))]:
        shutil.copy2(src, report / src.name)
        copied.append(src.name)
    expert = json.loads((out / "raw" / "success_report.json").read_text())
    summary_files = sorted((out / "eval").rglob("summary.json"))
    eval_summary = json.loads(summary_files[0].read_text()) if summary_files else {}
    metrics_md = sorted((out / "imagine").glob("*_metrics.md"))
    lines = [
        "# worldvla demo report", "",
        f"Suite {cfg.suite}, tasks {cfg.tasks}, {cfg.resolution} px, chunk K={cfg.chunk_size}, "
        f"{cfg.train_steps} tiny-model steps. Checkpoint: `{ckpt}`.", "",
        "## Scripted expert (demonstrations)", "", "```json", json.dumps(expert, indent=1)[:2000], "```", "",
        "## Training", "", "![loss curve](loss_curve.png)", "",
        "## LIBERO evaluation (tiny model: success is not expected)", "", "```json",
        json.dumps(eval_summary, indent=1)[:2000], "```", "",
        "## World-model imagination (top: ground truth, bottom: imagined)", "",
        *[f"![{n}]({n})" for n in copied if n.endswith(".png") and n != "loss_curve.png"], "",
        metrics_md[0].read_text() if metrics_md else "", "",
        "## Stage times (s)", "", *[f"- {k}: {v:.0f}" for k, v in times.items()], "",
        f"Files: {', '.join(copied)}",
    ]
    (report / "summary.md").write_text("\n".join(lines))
    log.info("report written to %s", report)
    return report


def main(argv: list[str] | None = None) -> int:
    from worldvla.config import parse_cli

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = parse_cli(DemoConfig, argv, description=__doc__)
    t0 = time.time()
    report = run(cfg)
    print(f"\nworldvla demo finished in {time.time() - t0:.0f} s: open {report / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

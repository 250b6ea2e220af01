"""The paper's two claims at a larger CPU setting than the demo: does the action-mask effect grow with K?

    nice -n 10 python benchmarks/claims.py [--out outputs/claims] > outputs/claims/claims.log 2>&1

Runs the demo pipeline (worldvla/demo.py) twice on the same scripted demonstrations (2 libero_object
tasks x 8 demos; 6 per task train, 2 whole demos per task held out as val_ind), with a wider tiny
model (dim 128, 2 layers), 600 steps, no LIBERO rollouts:
  K = 5   action-mask model + causal-mask ablation (same data, steps, seed), open-loop on val_ind, imagine
  K = 10  the same on the same frames (data_from= the K = 5 run)
and writes `<out>/claims_summary.json` + `.md`: the open-loop L1 by chunk position for mask vs causal
at each K, and the world model's true-vs-shuffled / zero action gap. Designed for < 1 hour on an idle
2-core machine (record ~5 min, regenerate ~4 min, 4 trainings ~4-5 min each); every stage resumes, so
an interrupted run continues where it stopped. Numbers and stage times (with the load average at the
end of each stage) are in each run's `report/summary.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["tasks=0-1", "episodes=0-7", "train_ratio=0.75", "model_dim=128", "train_steps=600", "eval_trials=0",
          "imagine_trajectories=4", "horizon=8"]


def settings(out: Path) -> dict[int, list[str]]:
    return {5: [f"out={out / 'k5'}", "chunk_size=5", *COMMON],
            10: [f"out={out / 'k10'}", "chunk_size=10", f"data_from={out / 'k5'}", *COMMON]}


def summarise(out: Path) -> dict:
    rows = {}
    for k in (5, 10):
        run = out / f"k{k}"
        row = {}
        for label in ("mask", "causal"):
            path = run / "open_loop" / label / "open_loop_val_ind.json"
            if path.is_file():
                r = json.loads(path.read_text())
                row[label] = {key: r[key] for key in ("n_samples", "l1", "l1_by_position", "gripper_agreement",
                                                      "token_accuracy")}
        metrics = sorted((run / "imagine").glob("*_metrics.json"))
        if metrics:
            gaps = json.loads(metrics[0].read_text()).get("action_sensitivity", {}).get("inf", {})
            row["world_gap"] = {v: {"clips": g["num_clips"], **g["summary"], "psnr_by_horizon": g["per_frame"].get("psnr")}
                                for v, g in gaps.items()}
        stages = {p.stem: json.loads(p.read_text()) for p in sorted((run / ".stages").glob("*.json"))} \
            if (run / ".stages").is_dir() else {}
        row["stage_seconds"] = {s: round(v["seconds"]) for s, v in stages.items()}
        row["stage_load_avg"] = {s: v.get("load_avg") for s, v in stages.items()}
        rows[k] = row
    return rows


def markdown(rows: dict) -> str:
    lines = [("| K | model | held-out samples | L1 by chunk position k = 1..K (env units) | last - first | "
              "gripper agreement | token accuracy |"), "|---:|---|---:|---|---:|---:|---:|"]
    for k, row in rows.items():
        for label in ("mask", "causal"):
            r = row.get(label)
            if r:
                c = r["l1_by_position"]
                lines.append(f"| {k} | {label} | {r['n_samples']} | {', '.join(f'{v:.3f}' for v in c)} | "
                             f"{c[-1] - c[0]:+.3f} | {r['gripper_agreement']:.3f} | {r['token_accuracy']:.3f} |")
    lines += ["", "| K | world model: true minus | clips | PSNR gap [dB] | SSIM gap |", "|---:|---|---:|---:|---:|"]
    for k, row in rows.items():
        for variant, g in (row.get("world_gap") or {}).items():
            lines.append(f"| {k} | {variant} | {g['clips']} | {g.get('psnr', float('nan')):+.3f} | "
                         f"{g.get('ssim', float('nan')):+.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/claims")
    ap.add_argument("--only", type=int, choices=(5, 10), help="run one K only")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    import subprocess

    for k, demo_args in settings(out).items():
        if args.only and k != args.only:
            continue
        t0 = time.time()
        print(f"[claims] K = {k}: python -m worldvla.demo {' '.join(demo_args)}", flush=True)
        res = subprocess.run([sys.executable, "-m", "worldvla.demo", *demo_args], cwd=ROOT, env=env, check=False)
        print(f"[claims] K = {k} finished in {time.time() - t0:.0f} s (exit {res.returncode}), load average "
              f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        if res.returncode != 0:
            return res.returncode
    rows = summarise(out)
    (out / "claims_summary.json").write_text(json.dumps(rows, indent=1))
    (out / "claims_summary.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

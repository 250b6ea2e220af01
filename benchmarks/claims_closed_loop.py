"""The paper's claims in closed loop, at the scale of the learning recipe (configs/pipeline/learn_object.yaml).

    python benchmarks/claims_closed_loop.py --seed 0     # one seed's five models (run seeds on separate cores)
    python benchmarks/claims_closed_loop.py --summary    # the table over every seed finished so far

Every model trains through the project's own pipeline (`python -m worldvla.demo`, the learn_object preset) on
the same 20 recorded and regenerated demonstrations (`--data`, a finished learn_object run), for `--epochs`
epochs, and is evaluated by `worldvla.eval.libero` under the standard protocol (280 steps, 10 wait steps,
whole chunk executed) on the `--trials` init states after the recorded ones (never trained on):
  (a) action mask vs causal mask, K = 5 and K = 10 (the paper's Figure 6): one pipeline run per K with
      causal=true trains both on the same tokens, data order and seed; the causal model decodes causally
      (worldvla.policy.checkpoint_action_mask), as it trained;
  (b) the action model alone (the two K = 5 mask runs above) vs action + world co-training (kinds=action,world,
      world loss weight 0.04), the paper's Table 4 rows 4 and 5;
  (c) the co-trained world model imagining `--imagine` demonstrations of init states it never saw (recorded
      here, once) with their true, shuffled and zero actions: PSNR / SSIM by horizon and the gap.
Per seed and model: `<out>/<run>_s<seed>/` (the pipeline's folders, `eval-held-out-causal/` for the causal
model). The summary (`<out>/claims_summary.{json,md}`) pools the seeds with Wilson 95 % intervals and keeps
each seed's count. Every stage resumes where it stopped (the pipeline's stamps; a finished eval is skipped).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from math import comb
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worldvla.demo import eval_command, newest_checkpoint  # noqa: E402
from worldvla.eval.results import wilson_interval  # noqa: E402

PRESET = "configs/pipeline/learn_object.yaml"
SUITE, TASK = "libero_object", 0
# (run folder, extra pipeline args): K=5 and K=10 train the mask and the causal model; cotrain adds world samples
RUNS = {"k5": ["causal=true"], "k10": ["causal=true", "recipe.chunk_size=10"], "cotrain": ["kinds=action,world"]}
# (label, run, eval folder) of each closed-loop row of the table
MODELS = [("action mask, K=5 (action only)", "k5", "eval-held-out"),
          ("causal mask, K=5 (action only)", "k5", "eval-held-out-causal"),
          ("action mask, K=10 (action only)", "k10", "eval-held-out"),
          ("causal mask, K=10 (action only)", "k10", "eval-held-out-causal"),
          ("action mask, K=5, action + world co-training", "cotrain", "eval-held-out")]


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def call(args: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    print(f"[claims] python {' '.join(args)}  (log: {log})", flush=True)
    with open(log, "a") as f:
        rc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"[claims]   exit {rc} after {time.time() - t0:.0f} s, load average {load()}", flush=True)
    if rc:
        raise SystemExit(f"[claims] failed (exit {rc}); see {log}")


def first_unseen(data: Path) -> int:
    report = json.loads((data / "raw" / "success_report.json").read_text())
    return 1 + max(e["episode"] for t in report["tasks"].values() for e in t["episodes"])


def held_out_demos(out: Path, episodes: str) -> Path:
    """Scripted demos of init states no model trained on, regenerated and exported once (for claim c)."""
    folder = out / "imagine_demos"
    export = folder / "export"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:  # two seeds' runs may get here together: one records
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "done").is_file():
            return export
        call(["libero_util/record_scripted_demos.py", f"suite={SUITE}", f"tasks={TASK}", f"episodes={episodes}",
              f"out={folder / 'raw'}", "resolution=128"], out / "imagine_demos.log")
        call(["libero_util/regenerate.py", f"suite={SUITE}", f"raw_dir={folder / 'raw'}", f"out_dir={folder / 'h5'}",
              f"tasks=[{TASK}]", "resolution=128", "workers=1", f"export_dir={export}", "export_layout=rynnvla"],
             out / "imagine_demos.log")
        (folder / "done").write_text("")
    return export


def run_seed(args) -> None:
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    first = first_unseen(data)
    for name, extra in RUNS.items():
        run = out / f"{name}_s{args.seed}"
        call(["-m", "worldvla.demo", "--config", PRESET, f"out={run}", f"data_from={data}", f"seed={args.seed}",
              f"train_epochs={args.epochs}", "eval_trials=0", f"eval_held_out={args.trials}", "workers=1", *extra],
             out / f"{run.name}.log")
        if "causal=true" in extra and not (run / "eval-held-out-causal" / "summary.json").is_file():
            call(eval_command(newest_checkpoint(run / "train_causal"), SUITE, str(TASK), first, args.trials, 1,
                              run / "eval-held-out-causal"),
                 out / f"{run.name}.log")
    run = out / f"cotrain_s{args.seed}"
    if not (run / "imagine" / "done").is_file():
        export = held_out_demos(out, args.imagine)
        call(["-m", "worldvla.eval.imagine", f"policy={newest_checkpoint(run / 'train')}", f"data_dir={export}",
              "split=all", f"horizon={args.horizon}", f"suite={SUITE}", "sensitivity=true",
              f"out_dir={run / 'imagine'}", "image_dir=imgs_third_view"], out / f"{run.name}.log")
        (run / "imagine" / "done").write_text("")


# -- summary ------------------------------------------------------------------------------------------
def episodes(folder: Path) -> list[dict]:
    path = folder / "episodes.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def train_minutes(run: Path, causal: bool) -> float | None:
    stamp = run / ".stages" / f"{'train-causal' if causal else 'train'}.json"
    return round(json.loads(stamp.read_text())["seconds"] / 60, 1) if stamp.is_file() else None


def summarise(out: Path) -> dict:
    found = (re.fullmatch(rf"({'|'.join(RUNS)})_s(\d+)", p.name) for p in out.iterdir() if p.is_dir())
    seeds = sorted({int(m.group(2)) for m in found if m})
    rows = []
    for label, name, ev in MODELS:
        per_seed, n_ok, n = {}, 0, 0
        for s in seeds:
            eps = episodes(out / f"{name}_s{s}" / ev)
            if eps:
                ok = sum(e["status"] == "success" for e in eps)
                per_seed[s] = {"successes": ok, "episodes": len(eps),
                               "train_min": train_minutes(out / f"{name}_s{s}", ev.endswith("causal"))}
                n_ok, n = n_ok + ok, n + len(eps)
        rows.append({"model": label, "per_seed": per_seed, "successes": n_ok, "episodes": n,
                     "wilson95": list(wilson_interval(n_ok, n)) if n else None})
    imagine = {}
    for s in seeds:
        metrics = sorted((out / f"cotrain_s{s}" / "imagine").glob("*_metrics.json"))
        if metrics:
            sens = json.loads(metrics[0].read_text()).get("action_sensitivity", {}).get("inf", {})
            imagine[s] = {v: {"clips": g["num_clips"], "psnr_gap": g["summary"].get("psnr"),
                              "ssim_gap": g["summary"].get("ssim"), "psnr_gap_by_horizon": g["per_frame"].get("psnr"),
                              "ssim_gap_by_horizon": g["per_frame"].get("ssim")} for v, g in sens.items()}
    return {"seeds": seeds, "closed_loop": rows, "comparisons": comparisons(rows), "imagine_gap": imagine}


def fisher_two_sided(a: int, n1: int, b: int, n2: int) -> float:
    """Fisher's exact test of a/n1 vs b/n2 successes: the probability, given the margins, of a table as
    unlikely as the one seen (two-sided, the sum over every table no likelier than it)."""
    k, n = a + b, n1 + n2
    p = [comb(n1, x) * comb(n2, k - x) / comb(n, k) for x in range(max(0, k - n2), min(k, n1) + 1)]
    seen = comb(n1, a) * comb(n2, b) / comb(n, k)
    return min(1.0, sum(q for q in p if q <= seen * (1 + 1e-9)))


# the comparisons each claim makes: (claim, row A, row B)
PAIRS = [("(a) K=5: action vs causal mask", 0, 1), ("(a) K=10: action vs causal mask", 2, 3),
         ("(b) K=5: action only vs co-training", 0, 4)]


def comparisons(rows: list[dict]) -> list[dict]:
    out = []
    for claim, i, j in PAIRS:
        a, b = rows[i], rows[j]
        if a["episodes"] and b["episodes"]:
            out.append({"claim": claim, "a": f"{a['successes']}/{a['episodes']}", "b": f"{b['successes']}/{b['episodes']}",
                        "fisher_p": fisher_two_sided(a["successes"], a["episodes"], b["successes"], b["episodes"])})
    return out


def markdown(res: dict) -> str:
    seeds = res["seeds"]
    lines = ["| model | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled | Wilson 95 % |",
             "|---|" + "---:|" * len(seeds) + "---:|---|"]
    for r in res["closed_loop"]:
        cells = [f"{r['per_seed'][s]['successes']}/{r['per_seed'][s]['episodes']}" if s in r["per_seed"] else "-"
                 for s in seeds]
        ci = f"{r['wilson95'][0]:.0%} - {r['wilson95'][1]:.0%}" if r["wilson95"] else "-"
        pooled = f"{r['successes']}/{r['episodes']}" if r["episodes"] else "-"
        lines.append(f"| {r['model']} | {' | '.join(cells)} | {pooled} | {ci} |")
    lines += ["", "| comparison (pooled over seeds) | A | B | Fisher exact p (two-sided) |", "|---|---:|---:|---:|"]
    lines += [f"| {c['claim']} | {c['a']} | {c['b']} | {c['fisher_p']:.3f} |" for c in res["comparisons"]]
    lines += ["", "| seed | true minus | clips | PSNR gap [dB] | SSIM gap | PSNR gap by horizon 1..H |",
              "|---:|---|---:|---:|---:|---|"]
    for s, gaps in res["imagine_gap"].items():
        for variant, g in gaps.items():
            by_h = ", ".join(f"{v:+.2f}" for v in g["psnr_gap_by_horizon"] or [])
            lines.append(f"| {s} | {variant} | {g['clips']} | {g['psnr_gap']:+.3f} | {g['ssim_gap']:+.4f} | {by_h} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="train and evaluate this seed's five models")
    ap.add_argument("--summary", action="store_true", help="write the table of every finished seed")
    ap.add_argument("--out", default="outputs/claims_cl")
    ap.add_argument("--data", default="outputs/learn_object", help="a finished learn_object run (its demos)")
    ap.add_argument("--epochs", type=float, default=6.0, help="training epochs of every model (the preset: 12)")
    ap.add_argument("--trials", type=int, default=10, help="held-out init states evaluated per model")
    ap.add_argument("--imagine", default="40-44", help="init states recorded for the imagination claim")
    ap.add_argument("--horizon", type=int, default=6, help="imagined frames per trajectory")
    args = ap.parse_args(argv)
    if args.seed is None and not args.summary:
        ap.error("pass --seed N and/or --summary")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.seed is not None:
        run_seed(args)
    if args.summary:
        res = summarise(out)
        (out / "claims_summary.json").write_text(json.dumps(res, indent=1))
        (out / "claims_summary.md").write_text(markdown(res))
        print(markdown(res))
        print(f"[claims] wrote {out / 'claims_summary.md'} and .json (load average {load()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Closed-loop learning on CPU: run pipeline presets (worldvla/demo.py through its CLIs) and print their
LIBERO success on seen and held-out init states with Wilson intervals, stage wall times and the load.

    nice python benchmarks/learning.py [configs/pipeline/learn_object_seen.yaml ...] [--summarize-only]

Each preset is `python -m worldvla.demo --config <preset>`: record scripted-expert demos -> regenerate ->
conversations -> fit the tiny VQ-GAN by steps -> pretokenize -> train -> `worldvla eval` under the standard
protocol (the suite's step budget, standard init states, 10 wait steps). Every stage resumes, so a rerun
only prints. The table goes to stdout and to `<out>/learning_summary.json` of each preset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worldvla.eval.results import wilson_interval

PRESETS = ["configs/pipeline/learn_object_seen.yaml"]


def outcome(folder: Path) -> dict | None:
    """Episodes, successes and the Wilson 95 % interval of one eval folder (None when it did not run)."""
    path = folder / "episodes.jsonl"
    if not path.is_file():
        return None
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    n, ok = len(recs), sum(r["status"] == "success" for r in recs)
    lo, hi = wilson_interval(ok, n)
    return {"episodes": n, "successes": ok, "rate": ok / max(n, 1), "wilson95": [lo, hi],
            "init_states": sorted({r["trial"] for r in recs})}


def stage_times(out: Path) -> dict:
    stamps = sorted((out / ".stages").glob("*.json")) if (out / ".stages").is_dir() else []
    rows = {p.stem: json.loads(p.read_text()) for p in stamps}
    return {k: {"seconds": round(v["seconds"]), "load_avg": v.get("load_avg")} for k, v in rows.items()}


def summarize(preset: str) -> dict:
    out = ROOT / yaml.safe_load((ROOT / preset).read_text())["out"]
    row = {"preset": preset, "out": str(out.relative_to(ROOT)), "seen": outcome(out / "eval"),
           "held_out": outcome(out / "eval-held-out"), "stages": stage_times(out)}
    (out / "learning_summary.json").write_text(json.dumps(row, indent=1))
    return row


def _cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    return f"{r['successes']}/{r['episodes']} ({r['rate']:.0%}, {r['wilson95'][0]:.0%}-{r['wilson95'][1]:.0%})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("presets", nargs="*", default=PRESETS)
    ap.add_argument("--summarize-only", action="store_true", help="print the table of finished runs")
    args = ap.parse_args()
    for preset in args.presets:
        if not args.summarize_only:
            subprocess.run([sys.executable, "-m", "worldvla.demo", "--config", preset], cwd=ROOT, check=True)
    print("| preset | seen init states | held-out init states | train s | eval s (seen / held-out) | load at end |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        r = summarize(preset)
        st = r["stages"]
        secs = {k: st.get(k, {}).get("seconds", "-") for k in ("train", "eval", "eval-held-out")}
        load = st.get("eval-held-out", st.get("eval", {})).get("load_avg") or os.getloadavg()
        print(f"| {preset} | {_cell(r['seen'])} | {_cell(r['held_out'])} | {secs['train']} | "
              f"{secs['eval']} / {secs['eval-held-out']} | {' / '.join(f'{x:.1f}' for x in load)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

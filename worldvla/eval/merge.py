"""Merge the shards of one evaluation (`--shard i/n` runs on several GPUs or machines).

Reads run*.json and episodes*.jsonl from every given directory, checks that all shards ran the same
policy and protocol, and writes episodes.merged.jsonl + summary.json / summary.md for all episodes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from worldvla.config import from_dict

from .config import EvalConfig
from .protocol import all_episodes
from .results import atomic_write_json, atomic_write_text, read_records, summarize, write_summary
from .runner import current_config, run_identity

log = logging.getLogger(__name__)


def _identity_without_shard(run: dict) -> dict:
    """Shards may sit on machines with other paths (or reach the policy through a server)."""
    ident = run_identity(run)
    ident["config"] = {k: v for k, v in ident["config"].items() if k != "shard"}
    ident["config"]["policy"] = {k: v for k, v in ident["config"]["policy"].items() if k != "path"}
    ident["policy"] = {k: v for k, v in ident["policy"].items() if k != "name"}
    return ident


def check_same_weights_across(runs: list[tuple[Path, dict]]) -> None:
    """Every shard that recorded a weights fingerprint (run.json `weights`) ran the same files: merging
    shards of two checkpoints would report one success rate for two models. Shards without one (a
    policy server, an older worldvla) cannot be checked: said in a warning."""
    recorded = [(p, run["weights"]) for p, run in runs if run.get("weights")]
    unchecked = [str(p.parent) for p, run in runs if not run.get("weights")]
    if unchecked and recorded:
        log.warning("%s record no weights fingerprint: cannot check that they ran the same checkpoint as %s",
                    unchecked, recorded[0][0].parent)
    if not recorded:
        return
    ref_path, ref = recorded[0]
    for p, weights in recorded[1:]:
        if weights.get("sha256") != ref.get("sha256"):
            raise ValueError(
                f"{p.parent} and {ref_path.parent} ran different weights: weights.sha256 {str(weights.get('sha256'))[:12]} "
                f"({p.name}) vs {str(ref.get('sha256'))[:12]} ({ref_path.name}); their episodes would mix two models")


def merge_runs(dirs: list[Path], out_dir: Path | None = None) -> dict:
    dirs = [Path(d) for d in dirs]
    runs = []
    for d in dirs:
        found = sorted(d.glob("run*.json"))
        if not found:
            raise FileNotFoundError(f"{d}: no run*.json (is this an evaluation output_dir?)")
        runs += [(p, json.loads(p.read_text())) for p in found]
    ref_path, ref = runs[0]
    for p, run in runs[1:]:
        if _identity_without_shard(run) != _identity_without_shard(ref):
            raise ValueError(f"{p} and {ref_path} are not shards of the same evaluation (settings differ)")
    check_same_weights_across(runs)
    specs = sorted({current_config(run["config"])["policy"]["path"] for _, run in runs})
    if len(specs) > 1:
        log.warning("shards name the policy differently: %s (make sure it is one checkpoint)", specs)
    shards = sorted({run["shard"] for _, run in runs})
    n = {int(s.split("/")[1]) for s in shards}
    if len(n) != 1 or len(shards) != next(iter(n)):
        log.warning("shards present: %s (a complete set is 0/n .. n-1/n)", shards)
    records = read_records(sorted(p for d in dirs for p in d.glob("episodes*.jsonl") if ".merged" not in p.name))
    cfg = from_dict(EvalConfig, {**current_config(ref["config"]), "shard": "0/1"})
    expected = all_episodes(cfg, lambda s: ref["num_tasks"][s])
    run = {**ref, "shard": "merged"}
    summary = summarize(records, expected, run)
    summary["merged_from"] = [str(p) for p, _ in runs]
    out_dir = Path(out_dir or dirs[0])
    atomic_write_text(out_dir / "episodes.merged.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(out_dir / "merge.json", {"sources": [str(p) for p, _ in runs], "shards": shards})
    js, md = write_summary(out_dir, summary)
    log.info("merged %d records from %d shard(s) into %s and %s", len(records), len(runs), js, md)
    return summary

"""Per-episode JSON lines, resume bookkeeping, per-task / per-suite summaries, shard merging.

episodes*.jsonl is append-only with one fsync'd line per finished episode (written by one process),
so a killed run loses at most the line being written; a later record for the same episode (a retried
error) supersedes earlier ones. Summaries are recomputed from the records, never accumulated.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from worldvla.atomic import atomic_write

from .protocol import HEADLINE_SUITES, EpisodeKey

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
PROTOCOL_SUITE_EPISODES = 500  # 10 tasks x 50 trials: a suite's rate is then a multiple of 0.2 %


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (as fractions); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)  # exact bounds at the ends (no rounding noise)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def is_multiple_of_0_2_pct(rate: float, episodes: int = PROTOCOL_SUITE_EPISODES) -> bool:
    """Whether a success rate (fraction) is k / 500 for an integer k: every per-suite value of the
    protocol is; one that is not comes from repeated or missing episodes (libero_protocol.md)."""
    k = rate * episodes
    return abs(k - round(k)) < 1e-6


def key_of(rec: dict) -> EpisodeKey:
    return EpisodeKey(rec["suite"], int(rec["task"]), int(rec["trial"]))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text)  # fsync + rename (+ fsync of the folder)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class EpisodeLog:
    """Append-only episodes.jsonl; repairs a torn last line left by a killed run."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run",
                            self.path, len(data) - keep)
                with open(self.path, "r+b") as f:
                    f.truncate(keep)

    def append(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        return read_records([self.path])


def read_records(paths: Iterable[Path]) -> list[dict]:
    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an unreadable line", path, i)
    return out


def final_records(records: Iterable[dict]) -> tuple[dict[EpisodeKey, dict], int]:
    """Last record per episode, and how many episodes have more than one non-error record (a bug)."""
    last: dict[EpisodeKey, dict] = {}
    finished: dict[EpisodeKey, int] = defaultdict(int)
    for rec in records:
        k = key_of(rec)
        last[k] = rec
        finished[k] += rec.get("status") != "error"
    return last, sum(1 for c in finished.values() if c > 1)


def done_keys(records: Iterable[dict], retry_errors: bool) -> set[EpisodeKey]:
    last, _ = final_records(records)
    return {k for k, r in last.items() if not (retry_errors and r.get("status") == "error")}


def _rate_block(recs: list[dict], expected: int) -> dict:
    n = len(recs)
    succ = sum(1 for r in recs if r.get("status") == "success")
    errs = sum(1 for r in recs if r.get("status") == "error")
    lo, hi = wilson_interval(succ, n)
    ok_steps = [r["steps"] for r in recs if r.get("status") == "success" and r.get("steps") is not None]
    checked = [r for r in recs if r.get("grammar_violations") is not None]
    return {
        "episodes": n, "expected": expected, "missing": max(0, expected - n),
        "successes": succ, "failures": n - succ - errs, "errors": errs,
        "success_rate": succ / n if n else None,  # errors count as unsuccessful (denominator: all episodes)
        "success_rate_excluding_errors": succ / (n - errs) if n - errs else None,
        "ci95": [lo, hi],
        "mean_steps_successes": sum(ok_steps) / len(ok_steps) if ok_steps else None,
        # official decoding: failures the official loop's exception would cause (counted as failures)
        "decode_failures": sum(1 for r in recs if r.get("failure_reason")),
        # constrained decoding: chunks whose free argmax would have left the action grammar
        "grammar_violation_chunks": sum(r["grammar_violations"] for r in checked) if checked else None,
        "grammar_checked_chunks": sum(r.get("queries") or 0 for r in checked) if checked else None,
        "episodes_with_grammar_violations": sum(1 for r in checked if r["grammar_violations"]) if checked else None,
    }


def summarize(records: list[dict], expected: list[EpisodeKey], run: dict | None = None) -> dict:
    """Per-task and per-suite success with Wilson 95 % intervals and the episode-count checks."""
    last, dup = final_records(records)
    expected_set = set(expected)
    extra = sorted(set(last) - expected_set)
    by_suite_task: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for k in sorted(set(last) & expected_set):
        by_suite_task[k.suite][k.task].append(last[k])
    exp_count: dict[tuple[str, int], int] = defaultdict(int)
    for k in expected_set:
        exp_count[(k.suite, k.task)] += 1
    suites = {}
    for suite in sorted({k.suite for k in expected_set}):
        tasks = sorted({k.task for k in expected_set if k.suite == suite})
        per_task = {}
        for t in tasks:
            recs = by_suite_task[suite][t]
            block = _rate_block(recs, exp_count[(suite, t)])
            block["instruction"] = next((r.get("instruction", "") for r in recs), "")
            per_task[str(t)] = block
        all_recs = [r for t in tasks for r in by_suite_task[suite][t]]
        block = _rate_block(all_recs, sum(exp_count[(suite, t)] for t in tasks))
        block["complete"] = block["missing"] == 0
        if block["expected"] == PROTOCOL_SUITE_EPISODES and block["episodes"]:
            # the reported rate of a protocol-sized suite, checked as a reader would check a paper's number
            block["multiple_of_0_2_pct"] = is_multiple_of_0_2_pct(block["success_rate"])
        else:
            block["multiple_of_0_2_pct"] = None  # defined for the 500-episode suites of the protocol
        block["tasks"] = per_task
        suites[suite] = block
    headline = None
    if all(s in suites and suites[s]["complete"] for s in HEADLINE_SUITES):
        headline = sum(suites[s]["success_rate"] for s in HEADLINE_SUITES) / len(HEADLINE_SUITES)
    warnings = []
    if dup:
        warnings.append(f"{dup} episode(s) have more than one finished record (last one used)")
    if extra:
        warnings.append(f"{len(extra)} record(s) outside the configured episodes ignored")
    for s, b in suites.items():
        if b["missing"]:
            warnings.append(f"{s}: {b['missing']} of {b['expected']} episodes missing")
        if b["errors"]:
            warnings.append(f"{s}: {b['errors']} episode(s) ended with an error (counted as unsuccessful)")
        if b["multiple_of_0_2_pct"] is False:
            warnings.append(f"{s}: success rate {100 * b['success_rate']:.3f} % is not a multiple of 0.2 % "
                            f"({b['episodes']} episodes, not {PROTOCOL_SUITE_EPISODES}): do not report it")
    run = run or {}
    return {
        "policy": run.get("policy"), "deviations": run.get("deviations", []),
        "protocol_exact": not run.get("deviations"), "protocol": run.get("protocol"),
        "suites": suites, "headline_mean_4_suites": headline, "warnings": warnings,
        "timing": _timing(list(last.values())),
    }


def _timing(recs: list[dict]) -> dict:
    tot = sum(r.get("seconds") or 0.0 for r in recs)
    steps = sum(r.get("steps") or 0 for r in recs)
    sim = sum(r.get("sim_seconds") or 0.0 for r in recs)
    pol = sum(r.get("policy_seconds") or 0.0 for r in recs)
    reset = sum(r.get("reset_seconds") or 0.0 for r in recs)
    return {"episode_seconds": round(tot, 2), "policy_steps": steps,
            "sim_ms_per_step": round(1e3 * sim / steps, 2) if steps else None,
            "policy_wait_ms_per_step": round(1e3 * pol / steps, 2) if steps else None,
            "reset_seconds_per_episode": round(reset / len(recs), 2) if recs else None}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def summary_markdown(summary: dict) -> str:
    pol = summary.get("policy") or {}
    lines = [f"# LIBERO evaluation: {pol.get('name', '?')} ({pol.get('spec', '')})", ""]
    if summary["deviations"]:
        lines += ["**Not protocol-exact.** Deviations:", ""] + [f"- {d}" for d in summary["deviations"]] + [""]
    else:
        lines += ["Protocol-exact (libero_protocol.md).", ""]
    proto = summary.get("protocol") or {}
    lines += [f"Decoding: `{pol.get('decode_mode') or proto.get('decode_mode') or 'n/a'}`.", ""]
    if summary["warnings"]:
        lines += ["Warnings:", ""] + [f"- {w}" for w in summary["warnings"]] + [""]
    lines += ["| suite | episodes | successes | success | 95 % CI | errors | multiple of 0.2 % |",
              "|---|---|---|---|---|---|---|"]
    for s, b in summary["suites"].items():
        check = {True: "yes", False: "NO", None: "n/a"}[b["multiple_of_0_2_pct"]]
        lines.append(f"| {s} | {b['episodes']}/{b['expected']} | {b['successes']} | {_pct(b['success_rate'])} | "
                     f"{_pct(b['ci95'][0])} - {_pct(b['ci95'][1])} | {b['errors']} | {check} |")
    if summary["headline_mean_4_suites"] is not None:
        lines += ["", f"Mean of spatial/object/goal/10: **{_pct(summary['headline_mean_4_suites'])}**"]
    lines += _decode_lines(summary["suites"])
    for s, b in summary["suites"].items():
        lines += ["", f"## {s}", "", "| task | instruction | successes | success | 95 % CI | errors | mean steps (successes) |",
                  "|---|---|---|---|---|---|---|"]
        for t, tb in b["tasks"].items():
            steps = "-" if tb["mean_steps_successes"] is None else f"{tb['mean_steps_successes']:.0f}"
            lines.append(f"| {t} | {tb['instruction']} | {tb['successes']}/{tb['episodes']} | "
                         f"{_pct(tb['success_rate'])} | {_pct(tb['ci95'][0])} - {_pct(tb['ci95'][1])} | "
                         f"{tb['errors']} | {steps} |")
    return "\n".join(lines) + "\n"


def _decode_lines(suites: dict) -> list[str]:
    """What the decoding did: official-rule failures, and whether constrained decoding ever overrode
    the model's free argmax (if never, official decoding would have produced the same tokens)."""
    lines = []
    for s, b in suites.items():
        if b.get("decode_failures"):
            lines.append(f"- {s}: {b['decode_failures']} episode(s) failed by the official parsing rule "
                         "(reason in episodes.jsonl `failure_reason`)")
        if b.get("grammar_checked_chunks"):
            lines.append(f"- {s}: grammar violations of the free argmax in {b['grammar_violation_chunks']} of "
                         f"{b['grammar_checked_chunks']} chunks ({b['episodes_with_grammar_violations']} of "
                         f"{b['episodes']} episodes); 0: the free argmax kept to the grammar at every checked step, so "
                         "official decoding would very likely give the same actions")
    return ["", "Decoding:", ""] + lines if lines else []


def write_summary(out_dir: Path, summary: dict, suffix: str = "") -> tuple[Path, Path]:
    js, md = Path(out_dir) / f"summary{suffix}.json", Path(out_dir) / f"summary{suffix}.md"
    atomic_write_json(js, summary)
    atomic_write_text(md, summary_markdown(summary))
    return js, md

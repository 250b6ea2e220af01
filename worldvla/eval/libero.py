"""LIBERO rollout evaluation CLI.

    python -m worldvla.eval.libero --config configs/eval/libero_goal_256.yaml policy=CKPT_DIR [key=value ...]
    python -m worldvla.eval.libero policy=ws://127.0.0.1:8000 suites=[libero_10] num_workers=4
    python -m worldvla.eval.libero ... shard=1/4            # one of 4 machines; then:
    python -m worldvla.eval.libero merge OUT_DIR [OUT_DIR ...] [--out DIR]

Rerunning the same command resumes: finished episodes are skipped. Outputs in output_dir:
run.json (settings, protocol, deviations), episodes.jsonl (one line per episode), summary.json /
summary.md (per task and suite, Wilson 95 % intervals), eval.log, videos/<suite>/*.mp4.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from worldvla.config import ConfigError, parse_cli
from worldvla.errors import exit_on_input_errors

from .config import EvalConfig
from .merge import merge_runs
from .runner import Evaluation, ResumeMismatch


@dataclass
class MergeConfig:
    dirs: list[str] = field(default_factory=list, metadata={
        "help": "output directories of the shards (or one shared directory); also the bare words"})
    out: str | None = field(default=None, metadata={"help": "where to write the merged summary (default: the first dir)"})


def _merge_main(argv: list[str]) -> int:
    cfg = parse_cli(MergeConfig, argv, description="merge shard outputs of one evaluation into one summary",
                    prog="python -m worldvla.eval.libero merge", positional="dirs")
    if not cfg.dirs:
        raise ConfigError("name the shard output directories (merge DIR [DIR ...] [--out DIR])")
    _print_summary(merge_runs(cfg.dirs, cfg.out))  # shards of different runs or weights: one line (main)
    return 0


def _print_summary(summary: dict) -> None:
    for suite, b in summary["suites"].items():
        rate = "-" if b["success_rate"] is None else f"{100 * b['success_rate']:.1f} %"
        print(f"{suite}: {b['successes']}/{b['episodes']} ({rate}), 95 % CI "
              f"[{100 * b['ci95'][0]:.1f}, {100 * b['ci95'][1]:.1f}] %, errors {b['errors']}, missing {b['missing']}")
    if summary.get("headline_mean_4_suites") is not None:
        print(f"mean of the 4 suites: {100 * summary['headline_mean_4_suites']:.1f} %")
    for d in summary.get("deviations", []):
        print(f"deviation: {d}")
    for w in summary.get("warnings", []):
        print(f"warning: {w}")


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "merge":
        return _merge_main(argv[1:])
    cfg = parse_cli(EvalConfig, argv, description=__doc__)
    try:
        summary = Evaluation(cfg).execute()
    except KeyboardInterrupt:
        return 130
    _print_summary(summary)
    return 0


# A bad value, a resume into a run of other weights or settings, a missing file: one `error:` line, exit 2.
main = exit_on_input_errors(_main, ResumeMismatch, FileNotFoundError, ValueError)


if __name__ == "__main__":
    sys.exit(main())

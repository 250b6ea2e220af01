"""Record scripted-expert demos of LIBERO tasks as raw LIBERO demo HDF5 files.

    worldvla record-demos suite=libero_object tasks=0-9 episodes=0-9 out=data/raw/libero_object resolution=128
    (or: python -m worldvla.data.record_scripted ..., or: python libero_util/record_scripted_demos.py ...)

The expert (worldvla/envs/scripted_expert.py) plans pick-and-place from the simulator's object
poses. Every (task, init state) pair is attempted once; only successful attempts are written (as in
the released LIBERO data), to `<out>/<task.name>_demo.hdf5` as demo_0, demo_1, ..., and every
attempt is listed in `<out>/success_report.json` (success = the env's own `done`, i.e. the task's
BDDL goal; steps; wall time; the machine and its load).

Rerunning the same command resumes: finished tasks are skipped and finished attempts of an
interrupted task are reused (kept under `<out>/.parts/` until the task's file is written).
Files are written to a temporary name and renamed, so an interrupted run never leaves a half file.
See docs/scripted_expert.md for the tasks it solves and measured success rates.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from worldvla.config import parse_cli
from worldvla.data.recording import RecordScriptedConfig, record_scripted_demos
from worldvla.data.stage_cli import run
from worldvla.envs.libero import configure_libero
from worldvla.envs.scripted_expert import ExpertError


def record(argv: list[str] | None = None) -> dict:
    """Parse the config, record, print one line per task; returns the success report."""
    cfg = parse_cli(RecordScriptedConfig, argv, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    configure_libero()
    report = record_scripted_demos(cfg)
    for tid, task in sorted(report["tasks"].items(), key=lambda kv: int(kv[0])):
        print(f"task {tid} {task['task_name']}: {task['successes']}/{task['attempts']} "
              f"({100 * task['success_rate']:.0f} %) -> {task['file']}")
    print(f"report: {Path(cfg.out) / 'success_report.json'}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Expected failures (bad input, an expert that cannot plan) print one `error:` line and exit 2."""
    run(record, argv, ExpertError)
    return 0


if __name__ == "__main__":
    sys.exit(main())

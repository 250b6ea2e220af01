#!/usr/bin/env python
"""Record scripted-expert demos of LIBERO tasks as raw LIBERO demo HDF5 files.

The expert (worldvla/envs/scripted_expert.py) plans pick-and-place from the simulator's object
poses. Every (task, init state) pair is attempted once; only successful attempts are written (as in
the released LIBERO data), to `<out>/<task.name>_demo.hdf5` as demo_0, demo_1, ..., and every
attempt is listed in `<out>/success_report.json` (success = the env's own `done`, i.e. the task's
BDDL goal; steps; wall time; the machine and its load).

Rerunning the same command resumes: finished tasks are skipped and finished attempts of an
interrupted task are reused (kept under `<out>/.parts/` until the task's file is written).
Files are written to a temporary name and renamed, so an interrupted run never leaves a half file.

Example:
    python libero_util/record_scripted_demos.py suite=libero_object tasks=0-9 episodes=0-9 \\
        out=data/raw/libero_object resolution=128

See docs/scripted_expert.md for the tasks it solves and measured success rates.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.config import parse_cli


def main(argv=None) -> dict:
    from worldvla.envs.libero import configure_libero
    from worldvla.envs.scripted_expert import RecordScriptedConfig, record_scripted_demos

    cfg = parse_cli(RecordScriptedConfig, argv, description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")
    configure_libero()
    report = record_scripted_demos(cfg)
    for tid, task in sorted(report["tasks"].items(), key=lambda kv: int(kv[0])):
        print(f"task {tid} {task['task_name']}: {task['successes']}/{task['attempts']} "
              f"({100 * task['success_rate']:.0f} %) -> {task['file']}")
    print(f"report: {Path(cfg.out) / 'success_report.json'}")
    return report


if __name__ == "__main__":
    from worldvla.data.cli import run
    from worldvla.envs.scripted_expert import ExpertError

    try:
        run(main)
    except ExpertError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None

"""Entry points of the data pipeline: `python -m worldvla.data.cli <stage> [--config f.yaml] key=value ...`.

Stages: record (raw test demos in the simulator), regenerate, export, conversations, pretokenize,
concat. Each stage module owns its CLI (`cli(argv)` returns the result, `main(argv)` the exit code,
so `python -m worldvla.data.<stage>` and `worldvla <stage>` work); this module only dispatches to
them, lazily (some import torch), and is what the thin scripts in libero_util/ and data/ call.
Each parses its typed config with worldvla.config.parse_cli (defaults < YAML < overrides).
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from worldvla.config import parse_cli
from worldvla.data.recording import RecordSpec, record_task_demos
from worldvla.data.stage_cli import run, setup_logging

log = logging.getLogger("worldvla.data")


@dataclass
class RecordConfig:
    suite: str = "libero_goal"  # LIBERO suite
    tasks: list[int] = field(default_factory=lambda: [0])  # task ids to record
    n_demos: int = 2  # rollouts per task (init states 0..n-1)
    steps: int = 20  # actions per rollout
    resolution: int = 128  # camera px (raw LIBERO demos are 128)
    seed: int = 0  # seed of the noisy action script
    out_dir: Path = Path("data/raw/libero_goal")  # gets <task.name>_demo.hdf5


def record_main(argv=None) -> list[Path]:
    """Record short noisy rollouts as raw LIBERO demo files (test data; not expert demos)."""
    cfg = parse_cli(RecordConfig, argv, description=record_main.__doc__)
    setup_logging()
    out = []
    for tid in cfg.tasks:
        spec = RecordSpec(cfg.suite, tid, cfg.n_demos, cfg.steps, cfg.resolution, cfg.seed)
        out.append(record_task_demos(spec, cfg.out_dir))
        log.info("recorded %d demos of %s task %d -> %s", cfg.n_demos, cfg.suite, tid, out[-1])
    return out


def stage_module(stage: str):
    """worldvla.data.<stage>, imported by name when that stage runs (like worldvla/cli.py's commands): the
    torch-based stages take seconds to import, `record --help` and the thin scripts should not wait for them."""
    return importlib.import_module(f"worldvla.data.{stage}")


def regenerate_main(argv=None) -> Path:
    """worldvla.data.regenerate.cli: raw demos -> regenerated HDF5 (+ export)."""
    return stage_module("regenerate").cli(argv)


def export_main(argv=None) -> Path:
    """worldvla.data.export.cli: regenerated HDF5 -> official per-frame folders."""
    return stage_module("export").cli(argv)


def conversations_main(argv=None):
    """worldvla.data.conversations.cli: exported trajectories -> conversation JSONs."""
    return stage_module("conversations").cli(argv)


def pretokenize_main(argv=None) -> dict:
    """worldvla.data.pretokenize.cli: conversation JSONs -> token shards + manifest."""
    return stage_module("pretokenize").cli(argv)


def concat_main(argv=None) -> dict:
    """worldvla.data.concat.cli: pretokenized sets -> one training index."""
    return stage_module("concat").cli(argv)


STAGES = {"record": record_main, "regenerate": regenerate_main, "export": export_main,
          "conversations": conversations_main, "pretokenize": pretokenize_main, "concat": concat_main}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(__doc__)
        print("usage: python -m worldvla.data.cli {" + ",".join(STAGES) + "} [--help] [--config f.yaml] key=value ...")
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    run(STAGES[argv[0]], argv[1:])


if __name__ == "__main__":
    main()

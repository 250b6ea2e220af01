"""Entry points of the data pipeline: `python -m worldvla.data.cli <stage> [--config f.yaml] key=value ...`.

Stages: record (raw test demos in the simulator), regenerate, export, conversations, pretokenize,
concat. Each parses its typed config with worldvla.config.parse_cli (defaults < YAML < overrides),
logs what it wrote where, and is also reachable through the thin scripts in libero_util/ and data/.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from worldvla.config import parse_cli, save_config

log = logging.getLogger("worldvla.data")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(name)s] %(message)s", datefmt="%H:%M:%S")


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
    from worldvla.data.raw_demos import RecordSpec, record_task_demos

    cfg = parse_cli(RecordConfig, argv, description=record_main.__doc__)
    setup_logging()
    out = []
    for tid in cfg.tasks:
        spec = RecordSpec(cfg.suite, tid, cfg.n_demos, cfg.steps, cfg.resolution, cfg.seed)
        out.append(record_task_demos(spec, cfg.out_dir))
        log.info("recorded %d demos of %s task %d -> %s", cfg.n_demos, cfg.suite, tid, out[-1])
    return out


def regenerate_main(argv=None) -> Path:
    """Replay raw LIBERO demos at 256/512 px, drop no-ops and failed demos, write per-task HDF5 (+ PNG/npy export)."""
    from worldvla.data.regenerate import RegenerateConfig, regenerate

    cfg = parse_cli(RegenerateConfig, argv, description=regenerate_main.__doc__)
    setup_logging()
    out = regenerate(cfg)
    save_config(cfg, out / "regenerate_config.yaml")
    return out


def export_main(argv=None) -> Path:
    """Regenerated HDF5 files -> official folder layout (<task>/trj_<i>/action/, imgs/, imgs_wrist/, ...)."""
    from worldvla.data.export import ExportConfig, export

    cfg = parse_cli(ExportConfig, argv, description=export_main.__doc__)
    setup_logging()
    return export(cfg)


def conversations_main(argv=None):
    """Exported trajectories -> action/world conversation JSONs, split into train / val_ind / val_ood."""
    from worldvla.data.conversations import ConversationsConfig, generate

    cfg = parse_cli(ConversationsConfig, argv, description=conversations_main.__doc__)
    setup_logging()
    return generate(cfg)


def pretokenize_main(argv=None) -> dict:
    """Conversation JSONs -> memory-mappable token shards + manifest (parallel, resumable)."""
    from worldvla.data.pretokenize import PretokenizeConfig, pretokenize

    cfg = parse_cli(PretokenizeConfig, argv, description=pretokenize_main.__doc__)
    setup_logging()
    return pretokenize(cfg)


def concat_main(argv=None) -> dict:
    """Concatenate pretokenized sets (world first, then action, as official) into one index JSON."""
    from worldvla.data.concat import ConcatConfig, concatenate

    cfg = parse_cli(ConcatConfig, argv, description=concat_main.__doc__)
    setup_logging()
    return concatenate(cfg)


def run(fn, argv=None):
    """Call a stage; expected failures (bad input, missing file) print one `error:` line and exit 1.
    Set WORLDVLA_TRACEBACK=1 to see the traceback."""
    import os

    try:
        return fn(argv)
    except (FileNotFoundError, FileExistsError, ValueError, IndexError, KeyError) as err:
        if os.environ.get("WORLDVLA_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


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

"""Concatenate pretokenized sets (e.g. world-model then action-model samples) into one training set.

Writes a small JSON index, no copy of the tokens:
    {"format": "worldvla-concat/1", "sources": [{"path": <relative to the index>, "n_samples", "n_tokens",
     "fingerprint"}, ...], "n_samples", "n_tokens"}
`PretokenizedDataset(<index>)` reads it. The official scripts put world-model records first, then
action-model records (official_format.md §3.3); pass the inputs in that order to match.
Sources may be pretokenize.py folders, other indexes, or official record lists.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from worldvla.atomic import atomic_write_json
from worldvla.config import parse_cli
from worldvla.data.datasets import CONCAT_FORMAT, PretokenizedDataset
from worldvla.data.stage_cli import run, setup_logging

log = logging.getLogger(__name__)


@dataclass
class ConcatConfig:
    inputs: list[Path] = field(default_factory=list)  # pretokenized folders / indexes, in order (world first, official)
    output: Path = Path("data/processed/concate_tokens/libero_goal_his_2_train_img_only_ck_5_a2i_256.json")


def _entry(path: Path, out_dir: Path) -> dict:
    ds = PretokenizedDataset(path)  # validates the source
    lengths = ds.lengths
    manifest_path = path / "manifest.json"
    fp = json.loads(manifest_path.read_text()).get("fingerprint") if manifest_path.is_file() else None
    rel = os.path.relpath(path.resolve(), out_dir.resolve())
    return {"path": rel, "n_samples": len(ds), "n_tokens": int(lengths.sum()), "fingerprint": fp}


def concatenate(cfg: ConcatConfig) -> dict:
    if not cfg.inputs:
        raise ValueError("concatenate: no inputs (pass inputs=[world_dir,action_dir])")
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = [_entry(Path(p), out.parent) for p in cfg.inputs]
    index = {"format": CONCAT_FORMAT, "sources": sources,
             "n_samples": sum(s["n_samples"] for s in sources), "n_tokens": sum(s["n_tokens"] for s in sources)}
    atomic_write_json(out, index)
    log.info("concatenated %d sources (%d samples, %d tokens) -> %s", len(sources), index["n_samples"], index["n_tokens"], out)
    return index


def cli(argv: list[str] | None = None) -> dict:
    """Concatenate pretokenized sets (world first, then action, as official) into one index JSON."""
    cfg = parse_cli(ConcatConfig, argv, description=cli.__doc__)
    setup_logging()
    return concatenate(cfg)


def main(argv: list[str] | None = None) -> int:
    """`worldvla concat` / `python -m worldvla.data.concat [--config f.yaml] key=value ...`; --help lists every key."""
    run(cli, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

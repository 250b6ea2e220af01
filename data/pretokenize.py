#!/usr/bin/env python
"""Conversation JSONs -> token shards (uint32 ids, int32 labels, offsets, spans) + manifest; parallel, resumable.

Thin wrapper over worldvla.data.cli.pretokenize_main; run with --help for every option. See data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from worldvla.data.cli import pretokenize_main, run

if __name__ == "__main__":
    run(pretokenize_main)

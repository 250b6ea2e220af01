#!/usr/bin/env bash
# Merge the outputs of `shard=i/n` evaluation runs: exps/eval_merge.sh DIR [DIR ...] [--out DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
cd "$ROOT"
python -m worldvla.eval.libero merge "$@"

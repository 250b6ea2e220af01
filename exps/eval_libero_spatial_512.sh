#!/usr/bin/env bash
# Evaluate a checkpoint on libero_spatial at 512 px: configs/eval/libero_spatial_512.yaml.
# Usage: exps/eval_libero_spatial_512.sh CKPT_DIR|ws://host:port [key=value ...]  (DEVICE, EVAL_WORKERS: exps/eval_launch.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/eval_launch.sh"
cd "$ROOT"
launch_eval configs/eval/libero_spatial_512.yaml "$@"

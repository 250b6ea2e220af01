#!/usr/bin/env bash
# Evaluate a RynnVLA-002 checkpoint (wrist + state) on libero_goal, discrete actions: configs/eval/rynnvla002_libero_goal_256_discrete.yaml.
# Usage: exps/eval_rynnvla002_libero_goal_256_discrete.sh CKPT_DIR|ws://host:port [key=value ...]  (DEVICE, EVAL_WORKERS: exps/eval_launch.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/eval_launch.sh"
cd "$ROOT"
launch_eval configs/eval/rynnvla002_libero_goal_256_discrete.yaml "$@"

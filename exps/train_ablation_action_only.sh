#!/usr/bin/env bash
# Ablation, libero_goal 256 px: action model only (configs/ablation_action_only.yaml).
# Overrides go after the script: key.sub=value (e.g. train.max_steps=2). NGPU / ACCELERATE_CONFIG / NNODES:
# see exps/train_launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/train_launch.sh"
cd "$ROOT"
launch_train configs/ablation_action_only.yaml "$@"

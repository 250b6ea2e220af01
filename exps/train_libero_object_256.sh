#!/usr/bin/env bash
# WorldVLA on libero_object, 256 px (K=5, history 2, world weight 0.04): configs/libero_object_256.yaml.
# Overrides go after the script: key.sub=value (e.g. train.max_steps=2). NGPU / ACCELERATE_CONFIG / NNODES:
# see exps/train_launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/train_launch.sh"
cd "$ROOT"
launch_train configs/libero_object_256.yaml "$@"

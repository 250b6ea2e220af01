#!/usr/bin/env bash
# RynnVLA-002 on libero_10, 256 px, wrist + state, continuous actions: configs/rynnvla002_10_256_continuous.yaml.
# Overrides go after the script: key.sub=value (e.g. train.max_steps=2). NGPU / ACCELERATE_CONFIG / NNODES:
# see exps/train_launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/train_launch.sh"
cd "$ROOT"
launch_train configs/rynnvla002_10_256_continuous.yaml "$@"

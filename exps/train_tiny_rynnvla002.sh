#!/usr/bin/env bash
# Tiny random model with RynnVLA-002's wrist view, state and continuous head, on CPU (configs/tiny_rynnvla002.yaml).
# Make its data first: python -m worldvla.train.tiny_data --rynnvla002
# Overrides go after the script: key.sub=value (e.g. train.max_steps=2). NGPU / ACCELERATE_CONFIG / NNODES:
# see exps/train_launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/train_launch.sh"
cd "$ROOT"
launch_train configs/tiny_rynnvla002.yaml "$@"

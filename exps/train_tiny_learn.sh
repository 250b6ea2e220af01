#!/usr/bin/env bash
# The closed-loop learning preset on CPU (configs/tiny_learn.yaml: width 128, 4 layers, 128 px, the state);
# its data comes from the pipeline (exps/learn_object.sh, or worldvla/demo.py). Overrides go after the script:
# key.sub=value (e.g. data.train=[...] data.tokenizer=...). NGPU / ACCELERATE_CONFIG: see exps/train_launch.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/train_launch.sh"
cd "$ROOT"
launch_train configs/tiny_learn.yaml "$@"

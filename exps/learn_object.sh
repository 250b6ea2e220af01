#!/usr/bin/env bash
# The closed-loop learning recipe on CPU (configs/pipeline/learn_object.yaml, or the preset given
# first): scripted-expert demos of a libero_object task -> regenerate -> conversations -> pretokenize ->
# train (configs/tiny_learn.yaml) -> LIBERO evaluation on seen and held-out init states.
#   bash exps/learn_object.sh [configs/pipeline/<preset>.yaml] [key=value ...]
# Installs nothing: run `bash exps/setup.sh` once (or activate your own environment) first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
cd "$ROOT"
PRESET=configs/pipeline/learn_object.yaml
if [[ "${1:-}" == *.yaml ]]; then PRESET="$1"; shift; fi
exec python -m worldvla.demo --config "$PRESET" "$@"

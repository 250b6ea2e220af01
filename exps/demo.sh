#!/usr/bin/env bash
# The main job on the embedded default: set up .venv/, then run the CPU demo. Args go to the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/setup.sh"
cd "$ROOT"
python -m worldvla.demo "$@"

#!/usr/bin/env bash
# Set up the environment (exps/setup.sh) and run the test suite. Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/setup.sh"
cd "$ROOT"
python -m pytest -q "$@"

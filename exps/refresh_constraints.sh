#!/usr/bin/env bash
# Refresh constraints.txt: install worldvla with every extra into a scratch venv without constraints
# (the newest releases pip resolves), write its versions to constraints.txt. Then run
# `bash exps/test.sh` and commit constraints.txt only if the suite passes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
python3 -m venv "$SCRATCH/venv"
# shellcheck disable=SC1091
source "$SCRATCH/venv/bin/activate"
WORLDVLA_CONSTRAINTS="" bash "$ROOT/exps/setup.sh"
{ sed -n '1,3p' "$ROOT/constraints.txt"
  python -m pip freeze --exclude-editable | grep -v -E '^(torch|nvidia-|triton)'; } > "$ROOT/constraints.txt.tmp"
mv "$ROOT/constraints.txt.tmp" "$ROOT/constraints.txt"
echo "[refresh] wrote $ROOT/constraints.txt ($(grep -vc '^#' "$ROOT/constraints.txt") packages); now run: bash exps/test.sh"

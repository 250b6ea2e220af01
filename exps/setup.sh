#!/usr/bin/env bash
# Set up the Python environment: reuse an active virtualenv/conda env, else create .venv/ in the
# repo root. Installs under constraints.txt (the versions the tests last passed with; refreshed by
# exps/refresh_constraints.sh). Idempotent: reinstalls only when pyproject.toml or constraints.txt
# changed. Source it or run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${WORLDVLA_EXTRAS:-libero,serve,lerobot,deepspeed,dev}"
if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
  if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
    echo "[setup] creating $ROOT/.venv"
    python3 -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi
PY="$(command -v python)"
STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.worldvla-install-stamp"
CONSTRAINTS="${WORLDVLA_CONSTRAINTS-$ROOT/constraints.txt}"  # empty: no constraints (refresh_constraints.sh)
WANT="$(cat "$ROOT/pyproject.toml" ${CONSTRAINTS:+"$CONSTRAINTS"} | sha256sum | cut -d' ' -f1)-$EXTRAS"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "import worldvla" 2>/dev/null; then
  echo "[setup] environment up to date ($("$PY" -c 'import sys; print(sys.prefix)'))"
else
  echo "[setup] installing worldvla[$EXTRAS] into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install -q --upgrade pip
  # Prefer the small CPU build of torch 2.13.0 when the machine has it (WORLDVLA_TORCH overrides);
  # fall back to whatever the package index resolves for torch>=2.6 (a CUDA build on Linux).
  if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==${WORLDVLA_TORCH:-2.13.0}" || "$PY" -m pip install -q "torch>=2.6"
  fi
  # Pin the torch just installed (public version, no local "+cpu" label, which pip's resolver
  # cannot match against an index) so no extra's dependency swaps it for another build.
  PIN="$(mktemp)"
  "$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$PIN"
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]" -c "$PIN" ${CONSTRAINTS:+-c "$CONSTRAINTS"}
  rm -f "$PIN"
  echo "$WANT" > "$STAMP"
fi
# LIBERO config (written non-interactively) and a rendering backend for MuJoCo.
"$PY" -c "from worldvla.envs.libero import configure_libero; configure_libero()" 2>/dev/null \
  || echo "[setup] LIBERO not configured (extra 'libero' not installed?)"

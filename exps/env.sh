#!/usr/bin/env bash
# The environment of the per-suite train_*/eval_* scripts (sourced): use it, never change it. Activates the
# checkout's .venv/ when no virtualenv or conda env is active and .venv/ exists; installs nothing. Setting up
# an environment is the README's job (exps/setup.sh, which exps/demo.sh and exps/test.sh run).
_worldvla_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" && -f "$_worldvla_root/.venv/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$_worldvla_root/.venv/bin/activate"
fi
unset _worldvla_root

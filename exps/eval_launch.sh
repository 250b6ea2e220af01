#!/usr/bin/env bash
# Shared by exps/eval_<suite>_<res>.sh (sourced, after exps/env.sh):
#   launch_eval <config.yaml> <CKPT_DIR | ws://host:port | module:factory> [overrides...]
# Environment (optional): DEVICE (default cuda when available, else cpu); EVAL_WORKERS simulator
# processes (default: CPU cores - 1, at least 1); MUJOCO_GL (default egl). Rerun the same command to
# resume; add shard=i/n per machine and merge with exps/eval_merge.sh.
launch_eval() {
  local config="$1" policy="${2:-}"
  if [[ -z "$policy" || "$policy" == -* || "$policy" == *=* ]]; then
    echo "usage: $(basename "$0") CKPT_DIR|ws://host:port [key=value ...]" >&2
    return 2
  fi
  shift 2
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local device="${DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
  local cores
  cores="$(nproc 2>/dev/null || echo 2)"
  local workers="${EVAL_WORKERS:-$(( cores > 1 ? cores - 1 : 1 ))}"
  export MUJOCO_GL="${MUJOCO_GL:-egl}"
  python -m worldvla.eval.libero --config "$root/$config" "policy=$policy" "device=$device" \
    "num_workers=$workers" "$@"
}

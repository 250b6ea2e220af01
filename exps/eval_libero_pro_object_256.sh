#!/usr/bin/env bash
# LIBERO-PRO robustness of a libero_object checkpoint at 256 px (4 perturbed suites): configs/eval/libero_pro/libero_object_256.yaml.
# Usage: exps/eval_libero_pro_object_256.sh CKPT_DIR|ws://host:port [key=value ...]  (DEVICE, EVAL_WORKERS: exps/eval_launch.sh)
# One perturbation only: suites=[libero_object_swap]. See docs/libero_pro.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
# shellcheck disable=SC1091
source "$ROOT/exps/eval_launch.sh"
cd "$ROOT"
launch_eval configs/eval/libero_pro/libero_object_256.yaml "$@"

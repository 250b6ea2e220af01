#!/usr/bin/env bash
# Serve a checkpoint over websocket + msgpack for evaluation from another environment:
#   exps/eval_serve.sh CKPT_DIR [port=8000] [host=127.0.0.1]   then   exps/eval_libero_goal_256.sh ws://127.0.0.1:8000
#   exps/eval_serve.sh CKPT_DIR protocol=vla-eval (or openpi resize=true): for those harnesses, docs/serving.md
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/exps/env.sh"
cd "$ROOT"
CKPT="${1:?usage: exps/eval_serve.sh CKPT_DIR [key=value ...]}"
shift
DEVICE="${DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
python -m worldvla.serve "policy=$CKPT" "device=$DEVICE" "$@"

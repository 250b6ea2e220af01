#!/usr/bin/env bash
# Shared by exps/train_<preset>.sh (sourced, after exps/env.sh): `launch_train <config.yaml> [overrides...]`.
# Environment (all optional):
#   NGPU               processes per node (default: visible GPUs, 1 on a CPU-only machine)
#   ACCELERATE_CONFIG  accelerate config; default configs/accelerate/fsdp.yaml when more than one process.
#                      configs/accelerate/deepspeed_zero3.yaml selects DeepSpeed ZeRO-3.
#   NNODES NODE_RANK MASTER_ADDR MASTER_PORT   multi-node: run the same command on every node.
# One process without ACCELERATE_CONFIG runs `python -m worldvla.train` directly.
launch_train() {
  local config="$1"
  shift
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local ngpu="${NGPU:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
  local nnodes="${NNODES:-1}"
  if [[ "$ngpu" -le 1 && "$nnodes" -le 1 && -z "${ACCELERATE_CONFIG:-}" ]]; then
    python -m worldvla.train --config "$root/$config" "$@"
  else
    accelerate launch --config_file "${ACCELERATE_CONFIG:-$root/configs/accelerate/fsdp.yaml}" \
      --num_processes $((ngpu * nnodes)) --num_machines "$nnodes" --machine_rank "${NODE_RANK:-0}" \
      --main_process_ip "${MASTER_ADDR:-127.0.0.1}" --main_process_port "${MASTER_PORT:-29500}" \
      -m worldvla.train --config "$root/$config" "$@"
  fi
}

#!/usr/bin/env bash
# The GPU benchmarks in one go (what benchmarks/README.md records for a GPU):
#   bash benchmarks/gpu.sh OUT_DIR
# 1. decoding on the full-size (random-init) 7B in bf16: parallel vs sequential chunks, mask cost,
#    KV cache, FlexAttention vs SDPA; 2. training throughput and peak memory of an 8-layer 7B-width stack.
# Needs torch (CUDA) + numpy + pyyaml + tokenizers + safetensors + accelerate + h5py; no network.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout "${DECODE_TIMEOUT:-300}" python benchmarks/decode.py --device cuda --dtype bf16 --model 7b \
  --json "$OUT/decode_7b.json" 2>&1 | tee "$OUT/decode_7b.txt"
timeout "${TRAIN_TIMEOUT:-170}" python benchmarks/train.py --model 7b --layers 8 --device cuda --batch 4 \
  --steps 10 2>&1 | tee "$OUT/train_7b_8layers.txt"
timeout "${DECODE_TIMEOUT:-300}" python benchmarks/decode.py --device cuda --dtype bf16 --model 7b --compile \
  --sections chunks,masks,cache --json "$OUT/decode_7b_compiled.json" 2>&1 | tee "$OUT/decode_7b_compiled.txt"

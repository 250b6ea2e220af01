#!/usr/bin/env bash
# The GPU fast-path benchmarks in one call of the device tool (about 7 minutes on a fresh H200, set-up included):
#   bash benchmarks/gpu_bundle.sh            # here, once: writes .gpu_carry/ (git-ignored, ~35 MB)
#   device run: carry [".gpu_carry"], command `bash benchmarks/gpu.sh $OUT`, timeout_s 560
# Writes under OUT: gpu.txt (machine), setup.txt, decode_fastpath.{json,txt} (7B bf16 parallel K = 5 / 10 chunks
# at batch 1, 4, 16: eager vs static vs CUDA graph, tokens compared; the world model's next 256 px frame),
# eval_throughput.{json,txt} (16 LIBERO workers rendering with EGL + the batched random-init 7B policy on
# CUDA graphs for ~3 minutes: episodes/s, per-step split, 2,000 episodes extrapolated).
# Each stage has its own time limit, so one that hangs or fails still leaves the others' figures.
set -uo pipefail
OUT="${1:?usage: bash benchmarks/gpu.sh OUT_DIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
CARRY="${GPU_CARRY:-.gpu_carry}"
SITE="${GPU_SITE:-/tmp/worldvla_site}"
T0=$(date +%s)
{
  if compgen -G "$CARRY/gl/*.deb" >/dev/null; then for f in "$CARRY"/gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
  mkdir -p "$SITE"
  tar -xJf "$CARRY/site.tar.xz" -C "$SITE"
  tar -xJf "$CARRY/mujoco.tar.xz" -C "$SITE"
  echo "set-up $(( $(date +%s) - T0 )) s"
} >"$OUT/setup.txt" 2>&1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
export LIBERO_CONFIG_PATH=/tmp/worldvla_libero_config
if [ -d /usr/local/nvidia/share/glvnd/egl_vendor.d ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES="${__EGL_VENDOR_LIBRARY_FILENAMES:-/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json}"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, mujoco; print('torch', torch.__version__, 'mujoco', mujoco.__version__)"
  nproc; uptime
} >"$OUT/gpu.txt" 2>&1
cat "$OUT/setup.txt" "$OUT/gpu.txt"
timeout "${DECODE_TIMEOUT:-170}" python3 benchmarks/decode.py --device cuda --dtype bf16 --model 7b \
  --sections fastpath,world --batches 1,4,16 --repeats 5 --world-repeats 2 \
  --json "$OUT/decode_fastpath.json" 2>&1 | tee "$OUT/decode_fastpath.txt"
timeout "${EVAL_TIMEOUT:-260}" python3 benchmarks/eval_throughput.py --policy 7b --device cuda --compile \
  --workers 16 --max-batch 16 --seconds "${EVAL_SECONDS:-170}" --json "$OUT/eval_throughput.json" 2>&1 \
  | grep -v "robosuite WARNING" | tee "$OUT/eval_throughput.txt"
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$OUT/gpu.txt"

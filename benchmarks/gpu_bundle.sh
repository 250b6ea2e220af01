#!/usr/bin/env bash
# Prepare what benchmarks/gpu.sh needs on the GPU machine (python 3.12 + torch, no network, 64 MiB carried):
#   bash benchmarks/gpu_bundle.sh [.gpu_carry]     (here, with the project's venv active and LIBERO installed)
# Writes DIR/site.tar.xz (LIBERO, robosuite and their pure-Python dependencies, pruned to the libero_goal
# scenes: benchmarks/gpu_bundle.py), DIR/mujoco.tar.xz (MuJoCo's cp312 wheel, unpacked, without its viewer)
# and DIR/gl/ (EGL/GL loader .debs).
# Then call the device tool with carry [".gpu_carry"] and the command `bash benchmarks/gpu.sh $OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.gpu_carry}"
mkdir -p "$DIR/gl"
MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/gpu_bundle.py --out "$DIR"
MUJOCO_VERSION="$(python -c 'import mujoco; print(mujoco.__version__)')"
WHEELS="$(mktemp -d)"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$WHEELS" "mujoco==$MUJOCO_VERSION"
# the wheel unpacked without mujoco/experimental (the studio viewer, 17 MB of the 27 MB wheel): carried size
python -m zipfile -e "$WHEELS"/mujoco-*.whl "$WHEELS/site"
rm -rf "$WHEELS/site/mujoco/experimental"
tar -cJf "$DIR/mujoco.tar.xz" -C "$WHEELS/site" .
rm -rf "$WHEELS" "$DIR/wheels"
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
apt-get $o update -qq
(cd "$DIR/gl" && apt-get $o download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh "$DIR"/* && du -sh "$DIR"

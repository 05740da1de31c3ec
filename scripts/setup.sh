#!/usr/bin/env bash
# Set up .venv with everything animate4d needs. Safe to run again: it only adds what is missing.
#
#   bash scripts/setup.sh          the backend and the `animate4d` command
#   bash scripts/setup.sh --test   also the test tools: pytest, real Blender (bpy), gltf-validator,
#                                  Triton (its interpreter, for the GPU kernels' tests)
#
# Needs Python >= 3.11 (set PYTHON=/path/to/python to choose one); --test also needs Node.js/npm.
# On a GPU host, install your CUDA build of torch into .venv first; otherwise the CPU build of
# torch 2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: animate4d needs Python 3.11 or newer; '$py' is $("$py" --version 2>&1)." >&2
  echo "setup.sh: set PYTHON=/path/to/python3.11 and run again." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup.sh: creating .venv with $("$py" --version)"
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "setup.sh: installing torch 2.13.0 (CPU)"
  "${pip[@]}" install -q "torch==2.13.0"
fi

extras=backend
[ "$with_tests" = 1 ] && extras=backend,test
echo "setup.sh: installing animate4d[$extras]"
"${pip[@]}" install -q -e ".[$extras]"

if [ "$with_tests" = 1 ]; then
  # Triton's interpreter runs the GPU kernels' tests on the CPU. CPU builds of torch come
  # without Triton; a CUDA build brings its own, which this leaves alone.
  if [ "$(uname -sm)" = "Linux x86_64" ] && ! .venv/bin/python -c 'import triton' 2>/dev/null; then
    echo "setup.sh: installing triton 3.9.0 (the kernels' tests, interpreted)"
    "${pip[@]}" install -q "triton==3.9.0"
  fi
  if ! command -v npm >/dev/null; then
    echo "setup.sh: the tests need Node.js and npm (for the Khronos glTF validator)." >&2
    exit 1
  fi
  echo "setup.sh: installing the glTF validator (npm)"
  (cd tests/tools && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup.sh: ready: .venv/bin/animate4d"

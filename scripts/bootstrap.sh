#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment from nothing.
#
# - reuses a torch that the base interpreter already has (venv with --system-site-packages);
# - otherwise installs torch==2.13.0 from a local CPU wheel when pip can find one offline
#   (these development machines keep it on disk), and only then falls back to the official
#   CPU-only index, so a plain `pip install torch` never pulls a multi-GB CUDA build;
# - installs fuseface in editable mode with the dev, onnx, faiss, serve and milvus extras.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  flags=()
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    say "reusing the torch installed for $PYTHON"
    flags+=(--system-site-packages)
  fi
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "${flags[@]}" "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # 1) torch itself from a local wheel only (--no-index: never a download), 2) its small
  # dependencies from the package index.
  if "${PIP[@]}" install --no-index --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    "${PIP[@]}" install "torch==$TORCH_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
    say "installed torch==$TORCH_VERSION from a local wheel"
  else
    say "installing CPU-only torch from download.pytorch.org (override with TORCH_INSTALL_ARGS)"
    # shellcheck disable=SC2086
    "${PIP[@]}" install ${TORCH_INSTALL_ARGS:---index-url https://download.pytorch.org/whl/cpu torch}
  fi
fi

say "installing fuseface (editable) with extras dev,onnx,faiss,serve,milvus"
"${PIP[@]}" install -e ".[dev,onnx,faiss,serve,milvus]" 2> >(grep -v "is ignored: it is neither" >&2)
"$PY" -c "import torch, fuseface; print(f'[setup] torch {torch.__version__}, fuseface {fuseface.__version__}')"

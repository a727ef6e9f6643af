#!/usr/bin/env bash
# One command from a fresh checkout: set up (idempotent), then run.
#   bash scripts/quickstart.sh train [overrides...]   pre-train on the embedded default corpus
#   bash scripts/quickstart.sh test  [pytest args...] run the test suite
#   bash scripts/quickstart.sh setup                  only set up
# Environment: PYTHON (interpreter, default python3), FMLAB_VENV (default .venv),
# FMLAB_TORCH (torch requirement installed first when torch is missing, default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-train}
shift || true

PY=${PYTHON:-python3}
VENV=${FMLAB_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[fmlab] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.fmlab-installed"
want=$(cat pyproject.toml | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # Install torch before the project: the project asks for a range, which an installed torch
  # satisfies. On CPU-only machines of this project torch==2.13.0 is a local CPU build.
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "[fmlab] installing ${FMLAB_TORCH:-torch==2.13.0}"
    "$VPY" -m pip install -q "${FMLAB_TORCH:-torch==2.13.0}"
  fi
  echo "[fmlab] installing fmlab and its dependencies"
  "$VPY" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

case "$cmd" in
  setup) echo "[fmlab] ready: source $VENV/bin/activate" ;;
  train) exec "$VENV/bin/fmlab-train" "$@" ;;
  test) exec "$VPY" -m pytest "$@" ;;
  *) echo "usage: $0 {train|test|setup} [args...]" >&2; exit 2 ;;
esac

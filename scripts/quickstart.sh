#!/usr/bin/env bash
# One command from a fresh checkout: set up (idempotent), then run.
#   bash scripts/quickstart.sh train [overrides...]   pre-train on the embedded default corpus
#                                                     (installs the core package only)
#   bash scripts/quickstart.sh test  [pytest args...] run the test suite (installs fmlab[dev]:
#                                                     every extra plus the test tools)
#   bash scripts/quickstart.sh setup                  only set up (core; FMLAB_EXTRAS=dev for all)
# Environment: PYTHON (interpreter, default python3), FMLAB_VENV (default .venv),
# FMLAB_TORCH (torch requirement installed first when torch is missing, default torch==2.13.0),
# FMLAB_EXTRAS (extras to install, e.g. "eval,sweeps"; default: none for train/setup, dev for test),
# FMLAB_TEST_WORKERS (pytest worker processes for test, default 2; 0: none).
# docs/get-started/install.md lists the extras and what each one enables.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-train}
shift || true
case "$cmd" in
  train | setup) extras=${FMLAB_EXTRAS:-} ;;
  test) extras=${FMLAB_EXTRAS:-dev} ;;
  *) echo "usage: $0 {train|test|setup} [args...]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
VENV=${FMLAB_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[fmlab] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# One stamp per installed set, holding the pyproject.toml it was installed from: a venv set up
# for `test` (dev: everything) also serves `train` (core) without another pip run.
hash=$(sha1sum pyproject.toml | cut -d' ' -f1)
stamp() { echo "$VENV/.fmlab-installed-${1:-core}"; }
installed() { [ -f "$(stamp "$1")" ] && [ "$(cat "$(stamp "$1")")" = "$hash" ]; }
if ! installed "$extras" && ! { [ -z "$extras" ] && installed dev; }; then
  # Install torch before the project: the project asks for a range, which an installed torch
  # satisfies. On CPU-only machines of this project torch==2.13.0 is a local CPU build; on a GPU
  # machine the same requirement brings PyPI's CUDA build.
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "[fmlab] installing ${FMLAB_TORCH:-torch==2.13.0}"
    "$VPY" -m pip install -q "${FMLAB_TORCH:-torch==2.13.0}"
  fi
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  echo "[fmlab] installing fmlab ${extras:+[$extras] }and its dependencies"
  # Keep the torch just installed (or the user's own): a dependency that asks for torchvision
  # (litdata, in [streaming]) would otherwise pull the newest one and upgrade torch to a
  # multi-GB CUDA build; pinned, pip picks the torchvision that matches this torch.
  torch_pin="torch==$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")"
  "$VPY" -m pip install -q -e "$target" "$torch_pin"
  # litdata asks for torchvision, which only image data needs. A torchvision wheel built for
  # another torch (PyPI's CUDA one beside a local CPU torch) fails at import, and torchmetrics
  # and lightning import it when present: remove one that does not load rather than break both.
  if "$VPY" -m pip show -q torchvision >/dev/null 2>&1 \
    && ! "$VPY" -c "import torchvision" >/dev/null 2>&1; then
    echo "[fmlab] removing torchvision: it does not load beside $torch_pin (only image data needs it)"
    "$VPY" -m pip uninstall -q -y torchvision
  fi
  echo "$hash" > "$(stamp "$extras")"
fi

case "$cmd" in
  setup) echo "[fmlab] ready: source $VENV/bin/activate" ;;
  train) exec "$VENV/bin/fmlab-train" "$@" ;;
  test)
    # Test files spread over worker processes (FMLAB_TEST_WORKERS, default 2; 0 runs them in this
    # process), each test file in one worker (module fixtures built once). One torch thread per
    # worker: on 2 cores, two workers of 2 threads each spin against each other.
    workers=${FMLAB_TEST_WORKERS:-2}
    if [ "$workers" -gt 0 ] 2>/dev/null; then
      export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
      exec "$VPY" -m pytest -n "$workers" --dist loadfile "$@"
    fi
    exec "$VPY" -m pytest "$@" ;;
esac

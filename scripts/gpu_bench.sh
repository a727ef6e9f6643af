#!/usr/bin/env bash
# All GPU measurements of issue 8 as one command (one H100/H200, bf16), in about 8 minutes:
#   124M pre-training eager and compile + fused AdamW + clipping; 1.1B full fine-tuning vs LoRA r16
#   (speed, memory), LoReFT vs LoRA at equal rank, 1.1B pre-training and LoRA with compile.
# Each case runs a raw PyTorch loop and fmlab's Trainer path interleaved in one process
# (fmlab.bench); results are written after every case, so a run cut short keeps what it finished.
#
#   bash scripts/gpu_bench.sh                        # → benchmarks/gpu/results.{json,md}, env.txt
#   bash scripts/gpu_bench.sh --device cpu --tiny    # dry run of the same suite on a CPU
#   OUT=/some/dir BUDGET_S=600 bash scripts/gpu_bench.sh
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu}"
BUDGET_S="${BUDGET_S:-470}"   # leaves the 8-minute slot some room for start-up
mkdir -p "$OUT"
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi

export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    python -c "import torch, transformers, lightning; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'lightning', \
lightning.__version__)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
    fi
} > "$OUT/env.txt" 2>&1 || true

status=0
timeout --signal=INT --kill-after=20 "$BUDGET_S" \
    python scripts/benchmark.py --suite gpu --reps 2 \
    --json "$OUT/results.json" --markdown "$OUT/results.md" "$@" 2>&1 | tee "$OUT/log.txt" \
    || status=$?

if [ ! -f "$OUT/results.md" ] && [ -f "$OUT/results.json" ]; then
    # cut short by the budget: the table of the cases that finished
    python -c "import json, sys; from fmlab.bench.cli import markdown_table; \
sys.stdout.write(markdown_table(json.load(open('$OUT/results.json'))))" > "$OUT/results.md"
fi
echo "gpu_bench: exit $status; results in $OUT/ (results.json, results.md, log.txt, env.txt)"
exit "$status"

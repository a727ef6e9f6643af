"""fmlab's training path vs a plain PyTorch loop, in one process (see ``fmlab.bench``).

python scripts/benchmark.py --presets small --methods pretrain,lora --reps 5
python scripts/benchmark.py --suite gpu --json benchmarks/gpu.json --markdown benchmarks/gpu.md
python scripts/benchmark.py --suite gpu --device cpu --tiny   # dry run of the GPU suite
"""

from fmlab.bench.cli import main

if __name__ == "__main__":
    main()

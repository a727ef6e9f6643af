"""Streaming from an S3 server vs the same data from a local prepared dataset (tokens/s, data
wait), on fmlab's training path; see ``fmlab.bench.streaming``.

python scripts/bench_streaming.py --reps 3 --steps 40 --json benchmarks/streaming_cpu.json
"""

from fmlab.bench.streaming import main

if __name__ == "__main__":
    main()

"""Start-up of fmlab's console scripts against `python -c "import hydra"` (see fmlab.bench.startup).

python scripts/bench_startup.py                      # --help / --cfg job of every script, 5 runs
python scripts/bench_startup.py --only train --reps 10 --importtime /tmp/importtime.txt
python scripts/bench_startup.py --first-step 2       # + startup_s of the default run
"""

from fmlab.bench.startup import main

if __name__ == "__main__":
    main()

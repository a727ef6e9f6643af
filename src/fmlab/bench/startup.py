"""Start-up of the console scripts: wall time, CPU time and peak memory of ``--help`` and
``--cfg job``, against ``python -c "import hydra"`` as the floor; and the time a default run takes
to reach its first training step (``startup_s`` of its ``summary.json``).

``scripts/bench_startup.py`` is the command line. Each command runs ``reps`` times in a fresh
process; the table shows the median wall and CPU (user + system) seconds and the largest peak
resident set (``ru_maxrss`` of the command, run from a small probe process). On a shared
machine wall time swings with the load (printed beside the table); CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = ["Measurement", "console_scripts", "first_step", "main", "measure", "startup_commands"]

# console scripts whose --cfg job Hydra answers (the others use argparse)
HYDRA_SCRIPTS = ("fmlab-train", "fmlab-eval", "fmlab-prepare", "fmlab-generate", "fmlab-predict")


@dataclass
class Measurement:
    """Repeated runs of one command."""

    name: str
    wall_s: list[float]
    cpu_s: list[float]
    peak_rss_mb: float
    returncode: int

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_s)


def console_scripts() -> dict[str, list[str]]:
    """``fmlab-*`` console scripts -> the command that runs each.

    The installed script beside this interpreter when there is one, else the same entry point
    through ``python -c`` (what the generated script does).
    """
    found = {}
    for ep in entry_points(group="console_scripts"):
        if not ep.name.startswith("fmlab-") or ep.value.split(":")[0].split(".")[0] != "fmlab":
            continue
        script = Path(sys.executable).parent / ep.name
        if script.is_file():
            found[ep.name] = [str(script)]
        else:
            module, func = ep.value.split(":")
            code = f"import sys; from {module} import {func}; sys.exit({func}())"
            found[ep.name] = [sys.executable, "-c", code]
    return dict(sorted(found.items()))


def startup_commands() -> dict[str, list[str]]:
    """The floor, then ``--help`` of every console script and ``--cfg job`` of Hydra's."""
    commands = {'python -c "import hydra"': [sys.executable, "-c", "import hydra"]}
    for name, cmd in console_scripts().items():
        commands[f"{name} --help"] = [*cmd, "--help"]
        if name in HYDRA_SCRIPTS:
            commands[f"{name} --cfg job"] = [*cmd, "--cfg", "job"]
    return commands


# Runs one command and prints its wall time, CPU time and peak RSS. A small process of its own:
# a child's ru_maxrss starts at the memory of the process it was forked from, and this benchmark
# itself (fmlab.bench imports torch) is larger than `python -c "import hydra"`.
_PROBE = """
import json, os, resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.call(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
wall = time.perf_counter() - t0
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps([wall, use.ru_utime + use.ru_stime, use.ru_maxrss / 1024, code]))
"""


def _run(cmd: Sequence[str], cwd: str, env: dict[str, str]) -> tuple[float, float, float, int]:
    """One run: (wall s, CPU s, peak RSS MB, return code)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(cmd))],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall, cpu, rss, code = json.loads(done.stdout)
    return wall, cpu, rss, code


def measure(name: str, cmd: Sequence[str], reps: int, cwd: str) -> Measurement:
    """Run ``cmd`` ``reps`` times; a failing command is reported with its return code."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    walls, cpus, rss, rc = [], [], 0.0, 0
    for _ in range(reps):
        wall, cpu, peak, code = _run(cmd, cwd, env)
        walls.append(wall)
        cpus.append(cpu)
        rss, rc = max(rss, peak), rc or code
    return Measurement(name, walls, cpus, rss, rc)


def first_step(reps: int, overrides: Sequence[str], workdir: Path) -> list[dict[str, float]]:
    """``startup_s`` and ``startup_cpu_s`` of ``reps`` default runs (``fmlab-train debug=fast``
    plus ``overrides``).

    The first repetition may prepare the embedded corpus (an empty ``FMLAB_CACHE_DIR``); later
    ones find it in the cache, like a user's second run.
    """
    cmd = console_scripts()["fmlab-train"]
    env = {**os.environ, "FMLAB_LOG_DIR": str(workdir / "logs")}
    values = []
    for i in range(reps):
        run_dir = workdir / f"run{i}"
        args = ["debug=fast", "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}"]
        subprocess.run(
            [*cmd, *args, *overrides],
            cwd=workdir,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        values.append({k: summary[k] for k in ("startup_s", "startup_cpu_s")})
    return values


def _importtime(path: Path, cwd: str) -> list[tuple[str, float]]:
    """``python -X importtime`` of ``fmlab-train --cfg job`` into ``path``; the 12 slowest
    top-level imports (cumulative seconds)."""
    code = "import sys; from fmlab.train import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, "--cfg", "job"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    path.write_text(done.stderr)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((parts[2].strip(), int(parts[1]) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:12]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(results: list[Measurement], floor: Measurement) -> str:
    """The results as a Markdown table (medians; ratio of wall time to the floor's)."""
    lines = [
        "| command | wall s (median) | CPU s (median) | peak RSS MB | × floor (wall) |",
        "|---|---|---|---|---|",
    ]
    for m in results:
        status = "" if m.returncode == 0 else f" (exit {m.returncode})"
        lines.append(
            f"| `{m.name}`{status} | {m.wall_median:.2f} | {m.cpu_median:.2f} | "
            f"{m.peak_rss_mb:.0f} | {m.wall_median / floor.wall_median:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see ``python scripts/bench_startup.py --help``."""
    p = argparse.ArgumentParser(prog="bench_startup.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="runs per command (median reported)")
    p.add_argument("--only", default=None, help="commands containing this text (e.g. train)")
    p.add_argument("--json", type=Path, help="write the measurements here")
    p.add_argument("--importtime", type=Path, help="write -X importtime of fmlab-train --cfg job")
    p.add_argument(
        "--first-step",
        type=int,
        default=0,
        metavar="N",
        help="also run the default run (debug=fast) N times and report startup_s",
    )
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fmlab-startup-"))
    commands = startup_commands()
    floor_name = next(iter(commands))
    if args.only:
        commands = {k: v for k, v in commands.items() if args.only in k or k == floor_name}
    print(f"load average before: {_load()}  ({os.cpu_count()} CPUs)")
    results = []
    for name, cmd in commands.items():
        results.append(measure(name, cmd, args.reps, str(work)))
        m = results[-1]
        print(f"  {name}: {m.wall_median:.2f} s wall, {m.cpu_median:.2f} s CPU", flush=True)
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "reps": args.reps,
        "commands": [asdict(m) for m in results],
    }
    if args.importtime:
        top = _importtime(args.importtime, str(work))
        report["importtime_top"] = top
        print(f"\n-X importtime of fmlab-train --cfg job -> {args.importtime}; slowest imports:")
        for module, seconds in top:
            print(f"  {seconds:6.3f} s  {module}")
    if args.first_step:
        report["first_step"] = first_step(args.first_step, [], work)
        print("\ndefault run (fmlab-train debug=fast), process start -> first training step:")
        for i, row in enumerate(report["first_step"]):
            print(f"  run {i}: {row['startup_s']:.2f} s wall, {row['startup_cpu_s']:.2f} s CPU")
    report["load_after"] = _load()
    print(f"\n{markdown(results, results[0])}\n\nload average after: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)

"""Many console-script runs from one pre-imported interpreter (a test helper).

Importing fmlab's entry points (torch, Lightning, transformers) takes seconds; a test of fifteen
command lines that each fail in milliseconds would spend most of its time importing. Here one
process imports the entry points once and forks a child per command line. Each child is its own
process (exit code, stdout, stderr, working directory, environment) and runs exactly what the
installed console script runs: ``sys.exit(<entry point>())`` with ``sys.argv`` set.

    python -m tests.cli_zygote cases.json results.json

``cases.json``: ``[{"id", "script", "args", "cwd", "env": {}, "block": [modules]}]``; ``block``
makes those modules unimportable in that child (an optional package that is not installed).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any


def _entry_point(script: str) -> Any:
    found = [ep for ep in entry_points(group="console_scripts") if ep.name == script]
    if not found:
        raise SystemExit(f"no console script named {script}")
    return found[0].load()


def _child(case: dict[str, Any], main: Any, out: str, err: str) -> int:
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    os.chdir(case["cwd"])
    os.environ.update(case.get("env") or {})
    for module in case.get("block") or []:
        sys.modules[module] = None  # import fails, importlib.util.find_spec raises
    sys.argv = [case["script"], *case["args"]]
    try:
        sys.exit(main())
    except SystemExit as stop:  # what the interpreter does with it at exit
        if stop.code is None or isinstance(stop.code, int):
            return int(stop.code or 0)
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run(cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run every case in a forked child; ``{id: {"code", "stdout", "stderr"}}``."""
    mains = {c["script"]: _entry_point(c["script"]) for c in cases}  # the imports, once
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            out, err = Path(tmp, f"{case['id']}.out"), Path(tmp, f"{case['id']}.err")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    code = _child(case, mains[case["script"]], str(out), str(err))
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            results[case["id"]] = {
                "code": os.waitstatus_to_exitcode(status),
                "stdout": out.read_text(errors="replace") if out.is_file() else "",
                "stderr": err.read_text(errors="replace") if err.is_file() else "",
            }
    return results


if __name__ == "__main__":
    cases_file, results_file = sys.argv[1:3]
    Path(results_file).write_text(json.dumps(run(json.loads(Path(cases_file).read_text()))))

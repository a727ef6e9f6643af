"""Shared helpers of the data-preparation tests: random documents and one-stage runs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from fmlab.data.pipeline.engine import Runner, read_table
from fmlab.data.pipeline.read import resolve_source
from fmlab.data.pipeline.records import SourceSpec
from fmlab.data.pipeline.structure import Structure

# 2,000 made-up words: documents drawn from them share almost no 5-grams by chance
_rng = random.Random(1234)
VOCAB = sorted(
    {
        "".join(_rng.choice("abcdefghijklmnoprstuvw") for _ in range(_rng.randint(3, 9)))
        for _ in range(2200)
    }
)[:2000]


def random_doc(seed: int, words: int = 120) -> str:
    """A document of ``words`` random words in sentences (deterministic in ``seed``)."""
    rng = random.Random(seed)
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(VOCAB))
        if len(sentence) >= rng.randint(8, 16):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def structure(
    tmp: Path, spec: SourceSpec | str, kind: str = "text", **kwargs: Any
) -> tuple[dict[str, Any], Any]:
    """Run read + structure on one source; return its stats and records table."""
    spec = SourceSpec(path=spec) if isinstance(spec, str) else spec
    out = tmp / "structure-out"
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(tmp / "work", progress=False)
    stats = Structure(kind=kind, **kwargs).run(runner, [resolve_source(spec)], out, str(tmp))
    return stats, read_table(out / "data.arrow")


def run_stage(stage: Any, table: Any, tmp: Path, kind: str = "text", num_proc: int = 1, *extra):
    """Run one table → table stage; return its stats and output table."""
    out = tmp / f"{stage.name}-out"
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(tmp / "work", num_proc=num_proc, batch_size=64, progress=False)
    stats = stage.run(runner, table, out, kind, *extra)
    return stats, read_table(out / "data.arrow")

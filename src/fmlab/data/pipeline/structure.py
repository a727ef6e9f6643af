"""Read + structure stage: raw rows of every source → validated records (one Arrow file).

Each row is mapped onto the record schema by its source's field mapping and validated. Bad rows
are skipped and counted per reason, with the ``file:line`` of the first few; a source whose bad
share exceeds ``max_bad_fraction``, or that yields no record at all, stops the run with an error
naming the source.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from fmlab.data.pipeline.engine import ArrowSink, Runner, Stage
from fmlab.data.pipeline.read import ResolvedSource, iter_rows
from fmlab.data.pipeline.records import BadRow, PrepareError, record_schema, to_record

__all__ = ["RowTally", "Structure"]


class RowTally:
    """Rows → records of one source: counts rows, kept records and bad rows by reason, keeping
    the position of the first ``limit`` bad rows per reason. Shared by both engines."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows = self.kept = 0
        self.bad: Counter = Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}

    def records(self, rows: Any, spec: Any, kind: str) -> Any:
        """Yield the valid records of ``(where, row)`` pairs (a record's row index in its
        source is ``self.rows - 1`` when it is yielded)."""
        for where, row in rows:
            self.rows += 1
            try:
                if isinstance(row, BadRow):
                    raise row
                rec = to_record(row, spec, kind, where)
            except BadRow as err:
                self.bad[err.reason] += 1
                listed = self.examples.setdefault(err.reason, [])
                if len(listed) < self.limit:
                    listed.append({"where": where, "detail": err.detail})
                continue
            self.kept += 1
            yield rec


def _summary(bad: Counter, examples: dict[str, list[dict[str, str]]]) -> str:
    parts = []
    for reason, n in bad.most_common():
        first = examples.get(reason, [])
        at = f" (first at {first[0]['where']}: {first[0]['detail']})" if first else ""
        parts.append(f"{reason} {n}{at}")
    return "; ".join(parts)


class Structure(Stage):
    """Map each source's fields onto fmlab's record schema and validate every record.

    Args:
        kind: ``text`` (pre-training), ``sft`` (prompt/response), ``classification``
            (input/label) or ``preference`` (prompt/chosen/rejected).
        max_bad_fraction: Largest share of bad rows a source may have before the run stops.
        examples: Bad rows per reason whose position is kept for the data card.
    """

    name = "structure"
    version = 1

    def __init__(
        self,
        kind: Literal["text", "sft", "classification", "preference"] = "text",
        max_bad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05,
        examples: Annotated[int, Field(ge=0)] = 5,
    ) -> None:
        super().__init__(kind=kind, max_bad_fraction=max_bad_fraction)
        self.kind, self.max_bad_fraction, self.examples = kind, max_bad_fraction, examples

    def run(
        self, runner: Runner, sources: list[ResolvedSource], out: Path, cache_dir: str
    ) -> dict[str, Any]:
        """Read every source into ``out/data.arrow``; return the stage stats."""
        schema = record_schema(self.kind)
        names = schema.names
        total_bad: Counter = Counter()
        examples: dict[str, list[dict[str, str]]] = {}
        per_source = []
        with ArrowSink(out / "data.arrow", schema) as sink:
            for src in sources:
                label = src.spec.label
                advance = runner.bar(f"read {Path(label).name[:16]}", None, "rows")
                tally = RowTally(self.examples)
                columns: dict[str, list] = {k: [] for k in names}
                for rec in tally.records(iter_rows(src, cache_dir=cache_dir), src.spec, self.kind):
                    for k in names:
                        columns[k].append(rec[k])
                    if len(columns["id"]) >= runner.batch_size:
                        sink.write(columns)
                        advance(len(columns["id"]))
                        columns = {k: [] for k in names}
                sink.write(columns)
                advance(len(columns["id"]), done=True)
                per_source.append(
                    self.account(
                        src, tally.rows, tally.kept, tally.bad, tally.examples, total_bad, examples
                    )
                )
        rows = sum(s["rows"] for s in per_source)
        return {
            "in": rows,
            "out": sink.rows,
            "removed": dict(total_bad),
            "examples": examples,
            "sources": per_source,
            "bytes": sum(s["bytes"] for s in per_source),
        }

    def account(
        self,
        src: ResolvedSource,
        rows: int,
        kept: int,
        bad: Counter,
        src_examples: dict[str, list],
        total_bad: Counter,
        examples: dict[str, list],
    ) -> dict[str, Any]:
        """Check one source's tallies (may stop the run), merge them into the totals and return
        its entry of the stage stats. Shared by both engines."""
        self._check(src.spec.label, rows, kept, bad, src_examples)
        total_bad.update(bad)
        for reason, items in src_examples.items():
            room = self.examples - len(examples.setdefault(reason, []))
            examples[reason].extend(items[: max(room, 0)])
        return {
            "source": src.spec.label,
            "files": len(src.files) if src.kind == "files" else None,
            "bytes": src.nbytes,
            "rows": rows,
            "kept": kept,
            "bad": dict(bad),
        }

    def _check(
        self, label: str, rows: int, kept: int, bad: Counter, examples: dict[str, list]
    ) -> None:
        if rows == 0:
            raise PrepareError(f"source '{label}': no rows (empty files?)")
        n_bad = rows - kept
        if kept == 0:
            raise PrepareError(
                f"source '{label}': no valid record among {rows} rows for kind "
                f"'{self.kind}': {_summary(bad, examples)}. Check the field mapping "
                "(text_field, prompt_field, ...) and structure.kind."
            )
        if n_bad / rows > self.max_bad_fraction:
            raise PrepareError(
                f"source '{label}': {n_bad} of {rows} rows are bad ({n_bad / rows:.1%} > "
                f"structure.max_bad_fraction={self.max_bad_fraction:.1%}): "
                f"{_summary(bad, examples)}. Fix the data or raise structure.max_bad_fraction."
            )

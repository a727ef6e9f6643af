"""fmlab's record schema, source specs, and the checks every raw row goes through.

A prepared dataset holds one of four record kinds:

- ``text``: ``text`` (pre-training, continued pre-training);
- ``sft``: ``prompt`` and ``response`` (supervised fine-tuning);
- ``classification``: ``text`` (the input) and ``label`` (multi-task heads);
- ``preference``: ``prompt``, ``chosen`` and ``rejected`` (DPO/IPO/SimPO pairs).

Every kind also carries ``id``, ``source``, ``domain`` and ``date`` (ISO ``YYYY-MM-DD`` or null).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

if TYPE_CHECKING:
    import pyarrow as pa

from fmlab.config.validate import ConfigError

__all__ = [
    "KINDS",
    "BadRow",
    "PrepareError",
    "SourceSpec",
    "content_fields",
    "content_of",
    "record_schema",
    "to_record",
]

Kind = Literal["text", "sft", "classification", "preference"]
KINDS: tuple[str, ...] = ("text", "sft", "classification", "preference")
_FIELDS = {"sft": ("prompt", "response"), "preference": ("prompt", "chosen", "rejected")}


class PrepareError(ConfigError):
    """Bad input or settings for data preparation; the message names the source, file or key."""


class SourceSpec(BaseModel):
    """One data source and how its fields map onto the record schema.

    ``path`` is a local file, glob or directory (``.txt .jsonl .json .csv .parquet``, optionally
    ``.gz``/``.bz2``/``.zst``/``.xz`` compressed), a ``save_to_disk`` directory, an ``s3://`` (or
    other fsspec) URI of any of these, ``embedded:english``/``embedded:code``, or a Hugging Face
    dataset name. Field names may be dotted paths into nested JSON (``meta.date``).

    ``split`` declares the split every row of this source goes to (``train``, ``validation`` or
    ``test``: your own held-out files); undeclared sources are hash-split
    (:mod:`fmlab.data.splits`). ``hf_split`` names the split to read from a Hub dataset or
    ``DatasetDict`` (default: ``split``, else ``train``).
    """

    model_config = ConfigDict(extra="forbid")
    path: str
    text_field: str = "text"
    prompt_field: str = "prompt"
    response_field: str = "response"
    chosen_field: str = "chosen"  # preference pairs
    rejected_field: str = "rejected"
    input_field: str | None = None  # classification input; defaults to text_field
    label_field: str = "label"
    id_field: str | None = None
    date_field: str | None = None
    domain_field: str | None = None
    domain: str | None = None  # one domain for every record of this source
    name: str | None = None  # how the source appears in ids and the data card (default: path)
    split: Literal["train", "validation", "test"] | None = None  # declared: every row goes there
    hf_split: str | None = None  # split read from a DatasetDict or Hub dataset
    hf_name: str | None = None  # Hub dataset configuration
    txt_sample_by: Literal["paragraph", "line", "document"] = "paragraph"
    storage_options: dict[str, Any] | None = None  # fsspec options (s3: endpoint_url, key, ...)

    @field_validator("split", mode="before")
    @classmethod
    def _known_split(cls, value: Any) -> Any:
        if value is not None and value not in ("train", "validation", "test"):
            raise ValueError(
                f"split={value!r}: the split these rows go to is train, validation or test; to "
                f"read a Hub/DatasetDict split named {value!r} set hf_split: {value}"
            )
        return value

    @property
    def label(self) -> str:
        return self.name or self.path

    @property
    def read_split(self) -> str:
        """The split read from a Hub dataset or ``DatasetDict``."""
        return self.hf_split or self.split or "train"


class BadRow(Exception):
    """A row that cannot become a record; ``reason`` is one of the counted reasons."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def content_fields(kind: str) -> tuple[str, ...]:
    """The text fields of a record kind (what cleaning edits)."""
    return _FIELDS.get(kind, ("text",))


def content_of(batch: dict[str, list], kind: str) -> list[str]:
    """One string per record: what filters, deduplication and decontamination look at."""
    if kind in _FIELDS:
        return ["\n\n".join(parts) for parts in zip(*(batch[f] for f in _FIELDS[kind]))]
    return batch["text"]


def record_schema(kind: str) -> pa.Schema:
    """Arrow schema of structured records of ``kind``."""
    import pyarrow as pa  # here, not at the top: fmlab-prepare's config schema imports this module

    fields = [pa.field("id", pa.string()), pa.field("source", pa.string())]
    if kind in _FIELDS:
        fields += [pa.field(f, pa.string()) for f in _FIELDS[kind]]
    else:
        fields.append(pa.field("text", pa.string()))
    if kind == "classification":
        fields.append(pa.field("label", pa.string()))
    fields += [pa.field("domain", pa.string()), pa.field("date", pa.string())]
    return pa.schema(fields)


_MISSING = object()


def _get(row: Any, path: str) -> Any:
    value = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _string(row: dict, field: str, *, required: bool = True) -> str | None:
    value = _get(row, field)
    if value is _MISSING or value is None:
        if required:
            raise BadRow("missing_field", f"no field '{field}'")
        return None
    if not isinstance(value, str):
        raise BadRow("non_string_field", f"field '{field}' is {type(value).__name__}, not a string")
    if not value.isascii():
        try:  # undecodable bytes survive decoding with surrogateescape as lone surrogates
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRow("invalid_utf8", f"field '{field}' is not valid UTF-8") from None
    return value


def _date(value: Any, field: str) -> str | None:
    if value is _MISSING or value is None or value == "":
        return None
    try:
        if isinstance(value, dt.datetime):
            return value.date().isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).date().isoformat()
        if isinstance(value, str):
            text = value.strip().replace("Z", "+00:00")
            return dt.datetime.fromisoformat(text).date().isoformat()
    except (ValueError, OverflowError, OSError):
        pass
    raise BadRow("invalid_date", f"field '{field}' = {str(value)[:40]!r} is not an ISO date")


def to_record(row: Any, spec: SourceSpec, kind: str, where: str) -> dict[str, Any]:
    """Map one raw row onto the record schema of ``kind``.

    Args:
        row: The parsed row (a dict, or a plain string for ``.txt`` sources).
        spec: The source's field mapping.
        kind: ``text``, ``sft``, ``classification`` or ``preference``.
        where: ``file:line`` (or ``file:row N``) of the row; the default record id.

    Raises:
        BadRow: With the counted reason (missing/non-string field, empty text, invalid UTF-8,
            invalid date or label, identical preference responses).
    """
    if isinstance(row, str):
        row = {spec.text_field: row}
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"expected an object with fields, got {type(row).__name__}")
    rec: dict[str, Any] = {}
    if kind in _FIELDS:
        mapping = {"prompt": spec.prompt_field, "response": spec.response_field}
        mapping.update(chosen=spec.chosen_field, rejected=spec.rejected_field)
        for key in _FIELDS[kind]:
            rec[key] = _string(row, mapping[key])
        for key in _FIELDS[kind]:
            if not rec[key].strip():
                raise BadRow("empty_text", f"field '{mapping[key]}' is empty")
        if kind == "preference" and " ".join(rec["chosen"].split()) == " ".join(
            rec["rejected"].split()
        ):
            raise BadRow("identical_responses", "chosen and rejected are the same text")
    else:
        field = (spec.input_field or spec.text_field) if kind == "classification" else None
        field = field or spec.text_field
        rec["text"] = _string(row, field)
        if not rec["text"].strip():
            raise BadRow("empty_text", f"field '{field}' is empty")
    if kind == "classification":
        label = _get(row, spec.label_field)
        if label is _MISSING or label is None:
            raise BadRow("missing_field", f"no field '{spec.label_field}'")
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise BadRow("invalid_label", f"label is {type(label).__name__}; expected str or int")
        rec["label"] = str(label)
    ident = _get(row, spec.id_field) if spec.id_field else _MISSING
    rec["id"] = where if ident is _MISSING or ident is None else str(ident)
    rec["source"] = spec.label
    domain = _string(row, spec.domain_field, required=False) if spec.domain_field else None
    rec["domain"] = domain or spec.domain
    rec["date"] = _date(_get(row, spec.date_field), spec.date_field) if spec.date_field else None
    return rec

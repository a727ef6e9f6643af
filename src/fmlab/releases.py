"""Releases: continued pre-training as a recurring process over dated data.

A *release* is a model trained on the dated records of a time window. The first one
(``data=release data.until=<day>``) takes everything up to a day; each update
(``experiment=continual_update init_from=<previous release>``) reads the parent's model card
(``fmlab_card.json``), trains on the records dated after the parent's data cutoff, and replays
the data the parent was trained on (its recorded mixture: sources and windows) at the share
``data.replay``. Windows are ``(after, before]`` (:mod:`fmlab.data.pipeline.dates`).

The card of a release records, under ``release``: its number, the window, the new records per
split, the new data cutoff (the latest date of the training split of the new records), the data
it was trained on (what the next release replays) and the chain back to the first release, each
entry with the model's fingerprint (:func:`fmlab.lineage.fingerprint`) and cutoff.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from torch.utils.data import DataLoader

from fmlab.config import ConfigError
from fmlab.data.datamodule import PretrainDataModule
from fmlab.data.loaders import eval_loader, rank_world
from fmlab.data.mixture import MixtureDataModule
from fmlab.data.pipeline import Clean, Decontaminate, Dedup, Filter, SourceSpec
from fmlab.data.pipeline.dates import (
    PERIODS,
    Undated,
    Unit,
    iso,
    period_bounds,
    period_of,
    previous_day,
)
from fmlab.data.tokenizer import fixed_tokenizer

__all__ = ["ReleaseDataModule", "parent_release", "release_facts", "source_dates"]

log = logging.getLogger(__name__)
_WINDOW_KEYS = ("date_after", "date_before", "undated", "rules")


def source_dates(specs: list[SourceSpec], cache_dir: str) -> Counter:
    """Records per date (``None``: undated) of ``specs``, read once without preparing them."""
    from fmlab.data.pipeline.read import iter_rows, resolve_source
    from fmlab.data.pipeline.structure import RowTally

    counts: Counter = Counter()
    for spec in specs:
        src = resolve_source(spec, None, cache_dir)
        for rec in RowTally(0).records(iter_rows(src, cache_dir), spec, "text"):
            counts[rec["date"]] += 1
    return counts


def _portable(spec: SourceSpec) -> dict[str, Any]:
    """A source as the card records it: local paths made absolute (a later run elsewhere)."""
    out = spec.model_dump(exclude_defaults=True)
    path = Path(spec.path).expanduser()
    if "://" not in spec.path and (path.exists() or any(c in spec.path for c in "*?[")):
        out["path"] = str(path.absolute())
    return out


def parent_release(value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parent's model card and its lineage entry (path, fingerprint, run id).

    Raises:
        ConfigError: No model at ``value`` (see :func:`fmlab.lineage.resolve_model_ref`).
    """
    from fmlab.lineage import resolve_model_ref

    ref = resolve_model_ref(value, "init_from", allow_checkpoint=True)
    card_path = Path(ref.path) / "fmlab_card.json"
    card = json.loads(card_path.read_text()) if ref.kind == "local" and card_path.is_file() else {}
    entry = {"model": ref.path, "fingerprint": ref.fingerprint, "run_id": ref.run_id}
    return card, entry


def _merged(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A parent's training data grouped by sources: windows joined, shares summed.

    The parts of one source are adjacent windows (an update starts the day after its parent's
    cutoff), so their union is one window from the earliest start to the latest end.
    """
    groups: dict[str, dict[str, Any]] = {}
    for part in data:
        key = json.dumps([part["sources"], part.get("undated", "drop")], sort_keys=True)
        if key not in groups:
            groups[key] = {**part, "share": part.get("share") or 0.0}
            continue
        g = groups[key]
        ends = (g["after"], part["after"]), (g["before"], part["before"])
        g["after"] = None if None in ends[0] else min(ends[0])
        g["before"] = None if None in ends[1] else max(ends[1])
        g["share"] += part.get("share") or 0.0
    return list(groups.values())


class ReleaseDataModule(MixtureDataModule):
    """The data of one release: new dated records of a window, plus replay of the parent's data.

    Args:
        sources: Dated sources (each with ``date_field``) the new records come from.
        parent: The previous release (``${init_from}``); None: the first release.
        after: Window start (exclusive); default: the parent's recorded data cutoff.
        until: Window end (inclusive); None: everything newer.
        replay: Share of training rows replayed from the parent's data (0 for a first release
            without ``replay_sources``: there is nothing to replay).
        replay_sources: Sources to replay instead of the parent's recorded data.
        periods: Held-out set per ``month``/``quarter``/``year`` of the sources (the forgetting
            monitor logs ``val/period/<label>/ppl``); None: none.
        undated: New-data records without a date: ``drop``, ``error`` or ``keep``.

    The other arguments (``block_size``, ``batch_size``, ``eval_batch_size``, ``val_fraction``,
    ``test_fraction``, ``split_salt``, ``num_proc``, ``cache_dir``, ``clean``, ``filter``,
    ``dedup``, ``decontaminate``, ``document_mask``, ``eval_stride``, ``progress``) are as in
    :class:`~fmlab.data.datamodule.PretrainDataModule`, for every part (``filter``: the quality
    rules; the window is set here); ``seed``, ``num_workers`` and ``pin_memory`` as in
    :class:`~fmlab.data.mixture.MixtureDataModule`.
    """

    def __init__(
        self,
        sources: list[str | SourceSpec],
        parent: str | None = None,
        after: dt.date | None = None,
        until: dt.date | None = None,
        replay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05,
        replay_sources: list[str | SourceSpec] | None = None,
        periods: Unit | None = "quarter",
        undated: Undated = "drop",
        block_size: Annotated[int, Field(gt=0)] = 128,
        batch_size: Annotated[int, Field(gt=0)] = 16,
        eval_batch_size: Annotated[int, Field(gt=0)] | None = None,
        val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05,
        test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05,
        split_salt: str = "",
        seed: int = 0,
        num_workers: Annotated[int, Field(ge=0)] = 0,
        pin_memory: bool = False,
        num_proc: Annotated[int, Field(ge=1)] = 1,
        cache_dir: str = ".cache/fmlab",
        clean: Clean | None = None,
        filter: Filter | None = None,
        dedup: Dedup | None = None,
        decontaminate: Decontaminate | None = None,
        document_mask: bool = False,
        eval_stride: Annotated[int, Field(gt=0)] | None = None,
        progress: bool = True,
    ) -> None:
        self.sources = [
            SourceSpec(path=s) if isinstance(s, str) else SourceSpec(**dict(s)) for s in sources
        ]
        if not self.sources:
            raise ConfigError("data.sources: a release needs at least one dated source")
        for i, spec in enumerate(self.sources):
            if not spec.date_field:
                raise ConfigError(
                    f"data.sources[{i}] ({spec.label}): no date_field; a release selects records "
                    "by date (give {path: ..., date_field: <field>})"
                )
        if filter is not None and any(k in filter.params for k in _WINDOW_KEYS[:3]):
            raise ConfigError(
                "data.filter.date_after/date_before/undated: a release sets its window itself; "
                "use data.after, data.until and data.undated"
            )
        self.part_settings = dict(
            block_size=block_size, batch_size=batch_size, eval_batch_size=eval_batch_size,
            val_fraction=val_fraction, test_fraction=test_fraction, split_salt=split_salt,
            seed=seed, num_workers=num_workers, pin_memory=pin_memory, num_proc=num_proc,
            cache_dir=cache_dir, clean=clean, dedup=dedup, decontaminate=decontaminate,
            document_mask=document_mask, eval_stride=eval_stride, progress=progress,
        )  # fmt: skip
        self.quality = filter
        self.parent = parent
        self.parent_card, self.parent_entry = parent_release(parent) if parent else ({}, {})
        self.after = iso(after) or self.parent_card.get("data_cutoff")
        if parent and self.after is None:
            raise ConfigError(
                f"init_from={parent}: its model card records no data cutoff (fmlab_card.json: "
                "data_cutoff), so there is no 'after' to start from; give data.after=YYYY-MM-DD"
            )
        self.until, self.undated, self.periods = iso(until), undated, periods
        if self.after and self.until and self.until <= self.after:
            raise ConfigError(
                f"data.until={self.until} must be after the window start {self.after} "
                "(the window is after < date <= until)"
            )
        if periods is not None and periods not in PERIODS:
            raise ConfigError(f"data.periods={periods!r}: expected one of {PERIODS} or null")
        self.replay_parts = self._replay_parts(replay_sources, replay)
        components = {"new": self._part(self.sources, self.after, self.until, undated)}
        weights = {}
        for i, part in enumerate(self.replay_parts):
            name = "replay" if len(self.replay_parts) == 1 else f"replay{i + 1}"
            specs = [SourceSpec(**s) for s in part["sources"]]
            components[name] = self._part(specs, part["after"], part["before"], part["undated"])
            weights[name] = part["share"] or 1.0
        self.replay_share = replay if self.replay_parts else 0.0
        super().__init__(
            components,
            domain="new",
            replay=self.replay_share if self.replay_parts else None,
            weights=weights or None,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.period_sets: dict[str, PretrainDataModule] = {}
        self.period_info: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- parts
    def _part(
        self, specs: list[SourceSpec], after: str | None, before: str | None, undated: str
    ) -> PretrainDataModule:
        """A :class:`PretrainDataModule` over ``specs`` restricted to ``(after, before]``."""
        q = self.quality
        rules = {k: v for k, v in (q.params if q else {}).items() if k not in _WINDOW_KEYS}
        enabled = bool(q and q.params.get("rules", q.enabled))
        window = Filter(
            enabled=enabled, **rules, date_after=after, date_before=before, undated=undated
        )
        return PretrainDataModule(sources=specs, filter=window, **self.part_settings)

    def _replay_parts(self, given: list | None, replay: float) -> list[dict[str, Any]]:
        if given:
            specs = [
                SourceSpec(path=s) if isinstance(s, str) else SourceSpec(**dict(s)) for s in given
            ]
            sources = [_portable(s) for s in specs]
            return [
                {"sources": sources, "after": None, "before": None, "undated": "keep", "share": 1.0}
            ]
        if not self.parent:
            return []  # the first release: nothing to replay
        recorded = (self.parent_card.get("release") or {}).get("data")
        if not recorded:
            if replay > 0:
                raise ConfigError(
                    f"init_from={self.parent}: its model card records no release data (it was not "
                    "trained with data=release), so there is nothing to replay from; give "
                    "data.replay_sources=[...] or data.replay=0"
                )
            return []
        return _merged(recorded)

    # ---------------------------------------------------------------- preparation
    def prepare(self, tokenizer_factory: Any) -> Any:
        """Check that the window holds records, prepare every part and the period sets.

        Raises:
            ConfigError: Nothing in the sources is dated inside the window (before training).
        """
        cache_dir = self.part_settings["cache_dir"]
        dates = source_dates(self.sources, cache_dir)
        dated = [d for d in dates if d is not None]
        inside = sum(
            n for d, n in dates.items()
            if d is not None and (self.after is None or d > self.after)
            and (self.until is None or d <= self.until)
        )  # fmt: skip
        if not inside:
            latest = max(dated) if dated else "none dated"
            where = f"the parent's data cutoff {self.after}" if self.parent else f"{self.after}"
            raise ConfigError(
                f"data.sources: nothing newer than {where}"
                + (f" up to data.until={self.until}" if self.until else "")
                + f": {sum(dates.values())} record(s), latest date {latest}. Add the new records "
                "to the sources (or set data.after/data.until) before training a release"
            )
        tok = super().prepare(tokenizer_factory)
        if self.periods:
            self._prepare_periods(sorted({period_of(d, self.periods) for d in dated}), tok)
        self.stats["release"] = {
            "window": self.window(),
            "records_in_window": inside,
            "periods": self.period_info,
        }
        return tok

    def _prepare_periods(self, labels: list[str], tok: Any) -> None:
        for label in labels:
            first, last = period_bounds(label)
            part = self._part(self.sources, previous_day(first), last, "drop")
            part.batch_size = 1  # evaluation only: no training batch needed
            try:
                part.prepare(fixed_tokenizer(tok))
            except ValueError as err:  # too few records for a held-out block
                log.warning("period %s: no held-out set (%s)", label, str(err).split(";")[0])
                self.period_info[label] = {"first": first, "last": last, "skipped": str(err)}
                continue
            val = part.stats["validation"]
            self.period_sets[label] = part
            self.period_info[label] = {
                "first": first,
                "last": last,
                "documents": val.get("documents"),
                "tokens": val.get("tokens"),
            }

    def window(self) -> dict[str, Any]:
        """The new data's window: ``after`` (exclusive), ``until`` (inclusive), undated policy."""
        return {"after": self.after, "until": self.until, "undated": self.undated}

    def period_loaders(self, split: str = "validation") -> dict[str, DataLoader]:
        """Held-out ``split`` loader per period (label → loader), in time order."""
        rank, world = rank_world(self)
        out = {}
        for label, part in self.period_sets.items():
            dataset, collate = part._dataset(split)
            out[label] = eval_loader(
                dataset, batch_size=part.eval_batch_size, rank=rank, world=world,
                collate_fn=collate, num_workers=self.num_workers, pin_memory=self.pin_memory,
            )  # fmt: skip
        return out


def _cutoff(dm: ReleaseDataModule) -> str | None:
    """The latest date of the new records' training split (what the model was trained on)."""
    dates = dm.components["new"].stats.get("dates") or {}
    return (dates.get("by_split") or {}).get("train", {}).get("max") or dates.get("max")


def release_facts(cfg: Any, datamodule: Any) -> dict[str, Any]:
    """Model-card facts of a release (empty for other data): see the module docstring."""
    if not isinstance(datamodule, ReleaseDataModule):
        return {}
    dm = datamodule
    cutoff = _cutoff(dm)
    parent = dm.parent_card.get("release") or {}
    chain = [dict(e) for e in parent.get("chain", [])]
    if dm.parent:
        if chain:  # the parent's own entry: now with its fingerprint
            chain[-1].update(dm.parent_entry)
        else:  # a parent trained otherwise: release 1 of the chain
            chain = [{"release": 1, **dm.parent_entry, "data_cutoff": dm.after, "window": None}]
    number = len(chain) + 1
    new = dm.components["new"].stats
    data = [
        {
            "sources": [_portable(s) for s in dm.sources],
            "after": dm.after,
            "before": cutoff,
            "undated": dm.undated,
            "share": float(dm.shares["new"]),
        }
    ]
    for name, part in zip([n for n in dm.names if n != "new"], dm.replay_parts):
        data.append({**part, "share": float(dm.shares[name])})
    run_id = Path(cfg.paths.output_dir).name if cfg.get("paths") else None
    chain.append(
        {
            "release": number,
            "model": None,  # this export; its fingerprint is recorded by the next release
            "fingerprint": None,
            "run_id": run_id,
            "data_cutoff": cutoff,
            "window": dm.window(),
        }
    )
    facts: dict[str, Any] = {
        "release": {
            "number": number,
            "window": dm.window(),
            "new_documents": {
                s: (new.get(s) or {}).get("documents") for s in ("train", "validation", "test")
            },
            "replay": dm.replay_share,
            "data": data,
            "chain": chain,
        }
    }
    if not cfg.get("data_cutoff"):
        facts["data_cutoff"] = cutoff
        facts["data_cutoff_source"] = (
            f"latest date trained on (release {number}: records after {dm.after or 'the start'})"
        )
    return facts

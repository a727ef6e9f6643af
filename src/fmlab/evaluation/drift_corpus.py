"""A dated news corpus with real temporal drift, generated offline (studies and tests).

A small simulated economy evolves quarter by quarter, and each quarter's documents report on it
as it is then:

- companies are founded (new names enter the vocabulary) and acquired (their names retire);
- facts change: chief executives are replaced, headquarters move, products launch;
- each quarter has its own trend words, talked about in that quarter and the next, then gone;
- a share of every document is stable filler (market talk that never changes).

So a model that knows one quarter mispredicts the names and facts of later ones (the future),
and one trained only on later quarters forgets the retired names and old facts (the past).
Documents are ``{"id", "date", "text"}`` rows; everything is a function of ``seed``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmlab.data.pipeline.dates import period_bounds

__all__ = ["DriftWorld", "drift_corpus", "write_drift_corpus"]

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ven",
    "tor",
    "sil",
    "quo",
    "dra",
    "fen",
    "bel",
    "cor",
    "nix",
    "zu",
    "pa",
    "tem",
    "ris",
    "gal",
    "mon",
    "hev",
]
_SECTORS = [
    "batteries",
    "shipping",
    "software",
    "farming",
    "robotics",
    "insurance",
    "textiles",
    "mining",
]
_CITIES = [
    "Lisbon",
    "Oslo",
    "Quito",
    "Dakar",
    "Hanoi",
    "Perth",
    "Tallinn",
    "Accra",
    "Cusco",
    "Riga",
    "Turku",
    "Malmo",
]
_FILLER = [
    "Markets were calm and trading volumes stayed near their recent averages.",
    "Bond yields moved little as investors waited for the next set of figures.",
    "The regional index closed slightly higher after a quiet session.",
    "Economists expect steady growth and moderate prices over the coming months.",
    "Retail sales held up well despite the cooler weather in the north.",
    "The central bank kept its policy rate unchanged at its latest meeting.",
]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts))


@dataclass
class _Company:
    name: str
    sector: str
    city: str
    ceo: str
    product: str
    founded: int  # period index
    retired: int | None = None
    events: list[str] = field(default_factory=list)  # this period's news


class DriftWorld:
    """The simulated economy; :meth:`advance` moves it one period on."""

    def __init__(self, seed: int = 0, companies: int = 8) -> None:
        self.rng = random.Random(seed)
        self.period = 0
        self.used: set[str] = set()
        self.companies = [self._company() for _ in range(companies)]
        self.trends: dict[int, list[str]] = {0: self._fresh(3, 3)}

    def _fresh(self, n: int, parts: int) -> list[str]:
        out = []
        while len(out) < n:
            w = _word(self.rng, parts)
            if w not in self.used:
                self.used.add(w)
                out.append(w)
        return out

    def _person(self) -> str:
        first, last = self._fresh(2, 2)
        return f"{first.capitalize()} {last.capitalize()}"

    def _company(self) -> _Company:
        return _Company(
            name=self._fresh(1, 3)[0].capitalize(),
            sector=self.rng.choice(_SECTORS),
            city=self.rng.choice(_CITIES),
            ceo=self._person(),
            product=self._fresh(1, 2)[0],
            founded=self.period,
        )

    def active(self) -> list[_Company]:
        return [c for c in self.companies if c.retired is None]

    def advance(self) -> None:
        """One period on: acquisitions, foundings, new chiefs, moves, launches, trend words."""
        self.period += 1
        rng = self.rng
        for c in self.companies:
            c.events = []
        live = self.active()
        for gone in rng.sample(live, 2):
            buyer = rng.choice([c for c in live if c is not gone])
            gone.retired = self.period
            buyer.events.append(f"{buyer.name} completed its purchase of {gone.name}.")
        for _ in range(2):
            c = self._company()
            c.events.append(
                f"{c.name}, a new {c.sector} company based in {c.city}, opened for business."
            )
            self.companies.append(c)
        for c in self.active():
            if c.founded == self.period:
                continue
            if rng.random() < 0.5:
                old, c.ceo = c.ceo, self._person()
                c.events.append(f"{c.name} named {c.ceo} chief executive, replacing {old}.")
            if rng.random() < 0.3:
                c.city = rng.choice([x for x in _CITIES if x != c.city])
                c.events.append(f"{c.name} moved its headquarters to {c.city}.")
            if rng.random() < 0.5:
                c.product = self._fresh(1, 2)[0]
                c.events.append(f"{c.name} launched the {c.product} this quarter.")
        self.trends[self.period] = self._fresh(3, 3)

    def sentence(self) -> str:
        """One sentence about the world as it is now."""
        rng = self.rng
        c = rng.choice(self.active())
        trends = self.trends[self.period] + self.trends.get(self.period - 1, [])
        kind = rng.random()
        if kind < 0.15:
            return rng.choice(_FILLER)
        if kind < 0.3 and c.events:
            return rng.choice(c.events)
        if kind < 0.5:
            return f"{c.name} chief executive {c.ceo} spoke about {c.sector} in {c.city}."
        if kind < 0.65:
            return f"The {c.product} from {c.name} sold well in {c.city}."
        if kind < 0.8:
            return f"{c.ceo} of {c.name} said {rng.choice(trends)} demand keeps growing."
        return f"Analysts said {rng.choice(trends)} and {rng.choice(trends)} lifted {c.name}."


def drift_corpus(
    periods: int = 6,
    docs_per_period: int = 300,
    start: str = "2023Q1",
    seed: int = 0,
    sentences: tuple[int, int] = (4, 8),
) -> list[dict[str, Any]]:
    """Dated documents of ``periods`` consecutive quarters from ``start`` (see the module doc)."""
    world = DriftWorld(seed)
    rng = random.Random(seed + 1)
    year, q = int(start[:4]), int(start[5:])
    rows = []
    for p in range(periods):
        if p:
            world.advance()
        first, last = (dt.date.fromisoformat(d) for d in period_bounds(f"{year}Q{q}"))
        span = (last - first).days
        for i in range(docs_per_period):
            day = first + dt.timedelta(days=rng.randint(0, span))
            text = " ".join(world.sentence() for _ in range(rng.randint(*sentences)))
            rows.append({"id": f"{year}Q{q}-{i}", "date": day.isoformat(), "text": text})
        year, q = (year + 1, 1) if q == 4 else (year, q + 1)
    return rows


def write_drift_corpus(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`drift_corpus` rows as JSONL to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in drift_corpus(**kwargs)))
    return path

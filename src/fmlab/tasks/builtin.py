"""Deterministic generators of SFT tasks with exact answers and disjoint splits.

Each task yields records ``{"prompt", "response"}`` (classification tasks also ``input`` and an
integer ``label``). :func:`wrong_answer` gives a plausible wrong response for a record
(preference pairs: chosen = the correct response, rejected = a wrong one). Splits are assigned
by a hash of the prompt, and prompts are unique, so the validation and test sets never share an
example with training, whatever the sizes asked for.

These are for examples, tests and demos; users bring their own JSONL.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from fmlab.data.splits import split_of

__all__ = ["CLASSIFY_LABELS", "TASKS", "WRONG_ANSWERS", "generate_task", "wrong_answer"]

Record = dict[str, Any]


def _digits(n: int, spaced: bool) -> str:
    return " ".join(str(n)) if spaced else str(n)


def arithmetic(rng: random.Random, digits: int = 2, op: str = "+", spaced: bool = True) -> Record:
    """``a op b`` with ``digits``-digit operands; spaced digits tokenize one digit per token."""
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if op == "-" and b > a:
        a, b = b, a
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {
        "prompt": f"Compute: {_digits(a, spaced)} {op} {_digits(b, spaced)} =",
        "response": f" {_digits(result, spaced)}",
    }


_WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "sun",
    "moon",
    "tree",
    "fish",
    "bird",
    "star",
    "rock",
]


def reverse(rng: random.Random, length: int = 4, vocab: int = 8) -> Record:
    """Reverse a list of ``length`` words drawn from the first ``vocab`` of a fixed word list."""
    words = [rng.choice(_WORDS[:vocab]) for _ in range(length)]
    return {"prompt": f"Reverse: {' '.join(words)} ->", "response": " " + " ".join(words[::-1])}


def sort_words(rng: random.Random, length: int = 4, vocab: int = 8) -> Record:
    """Sort words alphabetically."""
    words = [rng.choice(_WORDS[:vocab]) for _ in range(length)]
    return {"prompt": f"Sort: {' '.join(words)} ->", "response": " " + " ".join(sorted(words))}


def logic(rng: random.Random, terms: int = 5) -> Record:
    """Evaluate a boolean expression of ``terms`` literals joined by and/or (left to right)."""
    values = [rng.choice([True, False]) for _ in range(terms)]
    negate = [rng.random() < 0.3 for _ in range(terms)]
    ops = [rng.choice(["and", "or"]) for _ in range(terms - 1)]
    lit = [(not v) if n else v for v, n in zip(values, negate)]
    text = [f"{'not ' if n else ''}{str(v).lower()}" for v, n in zip(values, negate)]
    acc, expr = lit[0], text[0]
    for op, v, t in zip(ops, lit[1:], text[1:]):
        acc = (acc and v) if op == "and" else (acc or v)
        expr = f"({expr} {op} {t})"
    return {"prompt": f"Evaluate: {expr} =", "response": f" {str(acc).lower()}"}


CLASSIFY_LABELS = ["sports", "science", "food", "music"]
_TOPIC_WORDS = {
    "sports": ["goal", "match", "team", "coach", "score", "league", "runner", "ball"],
    "science": ["atom", "theory", "experiment", "cell", "energy", "planet", "data", "lab"],
    "food": ["bread", "soup", "spice", "recipe", "cheese", "oven", "fruit", "salad"],
    "music": ["guitar", "song", "melody", "drum", "choir", "album", "rhythm", "piano"],
}
_FILLER = ["the", "a", "today", "new", "old", "big", "small", "we", "saw", "about", "very", "and"]


_OPTIONS = " ".join(f"{chr(65 + i)}={name}" for i, name in enumerate(CLASSIFY_LABELS))


def classify(rng: random.Random, length: int = 8, topical: int = 2) -> Record:
    """Topic of a short text (4 classes): ``topical`` topic words hidden among filler words.

    The answer is the option letter (`` A``..`` D``), as in multiple-choice benchmarks: one token
    in any tokenizer, so methods that only steer the prompt (ReFT) are judged on the decision,
    not on spelling out a word the base model never learnt.
    """
    label = rng.randrange(len(CLASSIFY_LABELS))
    words = [rng.choice(_FILLER) for _ in range(length - topical)]
    for _ in range(topical):
        words.insert(
            rng.randrange(len(words) + 1), rng.choice(_TOPIC_WORDS[CLASSIFY_LABELS[label]])
        )
    text = " ".join(words)
    return {
        "prompt": f"Topic ({_OPTIONS}) of: {text} ->",
        "response": f" {chr(65 + label)}",
        "input": text,
        "label": label,
        "label_name": CLASSIFY_LABELS[label],
    }


def count(rng: random.Random, length: int = 10, topic: str = "food", most: int = 5) -> Record:
    """How many words of ``topic`` a short text holds (0..``most``): a regression target
    (``target``, a float) and, for generative use, the number as the response."""
    if topic not in _TOPIC_WORDS:
        raise ValueError(f"count: topic must be one of {sorted(_TOPIC_WORDS)}, got {topic!r}")
    k = rng.randint(0, min(most, length))
    words = [rng.choice(_FILLER) for _ in range(length - k)]
    for _ in range(k):
        words.insert(rng.randrange(len(words) + 1), rng.choice(_TOPIC_WORDS[topic]))
    text = " ".join(words)
    return {
        "prompt": f"Count {topic} words in: {text} ->",
        "response": f" {k}",
        "input": text,
        "target": float(k),
    }


TASKS: dict[str, Callable[..., Record]] = {
    "arithmetic": arithmetic,
    "count": count,
    "reverse": reverse,
    "sort": sort_words,
    "logic": logic,
    "classify": classify,
}


def _stream(name: str, seed: int, kwargs: dict[str, Any]) -> Iterator[Record]:
    make = TASKS[name]
    rng = random.Random(f"{name}|{seed}")
    while True:
        yield make(rng, **kwargs)


def generate_task(
    name: str,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    max_draws: int = 2_000_000,
    **kwargs: Any,
) -> dict[str, list[Record]]:
    """Generate ``name`` with the requested split sizes; deterministic for (name, seed, kwargs).

    Raises:
        ValueError: Unknown task, or a space too small for the requested unique examples.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; built-in tasks: {sorted(TASKS)}")
    want = {"train": n_train, "validation": n_val, "test": n_test}
    total = sum(want.values())
    out: dict[str, list[Record]] = {s: [] for s in want}
    seen: set[str] = set()
    # The split of an example depends only on its prompt; quotas just stop filling a split.
    val_frac, test_frac = n_val / max(total, 1), n_test / max(total, 1)
    for draws, rec in enumerate(_stream(name, seed, kwargs)):
        if all(len(out[s]) >= want[s] for s in want):
            break
        if draws >= max_draws:
            raise ValueError(
                f"task '{name}' {kwargs}: only {sum(map(len, out.values()))} unique examples "
                f"found for {total} requested; make the task larger or ask for fewer"
            )
        if rec["prompt"] in seen:
            continue
        seen.add(rec["prompt"])
        split = split_of(rec["prompt"], val_frac, test_frac, salt=f"task:{name}")
        if len(out[split]) < want[split]:
            out[split].append(rec)
    return out


# ---------------------------------------------------------------------------- wrong answers
def _wrong_words(words: list[str], rng: random.Random, vocab: int = 8) -> list[str]:
    """The same words with two different neighbours swapped, or one word replaced when all are
    equal: close to the right answer, never equal to it."""
    pairs = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
    out = list(words)
    if pairs:
        i = rng.choice(pairs)
        out[i], out[i + 1] = out[i + 1], out[i]
    else:
        i = rng.randrange(len(out))
        out[i] = rng.choice([w for w in _WORDS[: max(vocab, 2)] if w != out[i]])
    return out


def _wrong_number(value: int, rng: random.Random, spaced: bool, low: int = 0) -> str:
    candidates = [v for v in (value + d for d in (-10, -2, -1, 1, 2, 10)) if v >= low]
    return f" {_digits(rng.choice(candidates), spaced)}"


def _wrong_arithmetic(rec: Record, rng: random.Random, spaced: bool = True, **_: Any) -> str:
    return _wrong_number(int(rec["response"].replace(" ", "")), rng, spaced)


def _wrong_logic(rec: Record, rng: random.Random, **_: Any) -> str:
    return " false" if rec["response"].strip() == "true" else " true"


def _wrong_list(rec: Record, rng: random.Random, vocab: int = 8, **_: Any) -> str:
    return " " + " ".join(_wrong_words(rec["response"].split(), rng, vocab))


def _wrong_classify(rec: Record, rng: random.Random, **_: Any) -> str:
    others = [i for i in range(len(CLASSIFY_LABELS)) if i != rec["label"]]
    return f" {chr(65 + rng.choice(others))}"


def _wrong_count(rec: Record, rng: random.Random, **_: Any) -> str:
    k = int(rec["target"])
    return f" {k + 1 if k == 0 or rng.random() < 0.5 else k - 1}"


WRONG_ANSWERS: dict[str, Callable[..., str]] = {
    "arithmetic": _wrong_arithmetic,  # the result off by 1, 2 or 10
    "count": _wrong_count,  # off by one
    "reverse": _wrong_list,  # two neighbouring words swapped
    "sort": _wrong_list,
    "logic": _wrong_logic,  # the other truth value
    "classify": _wrong_classify,  # another option letter
}


def wrong_answer(name: str, record: Record, rng: random.Random, **task_args: Any) -> str:
    """A plausible wrong response to a record of task ``name`` (never equal to the right one).

    Args:
        name: The built-in task.
        record: One of its records.
        rng: Source of randomness (deterministic per seed).
        task_args: The generator's arguments (digit spacing, vocabulary size).
    """
    if name not in WRONG_ANSWERS:
        raise ValueError(f"no wrong-answer rule for task '{name}'; tasks: {sorted(WRONG_ANSWERS)}")
    keep = {k: v for k, v in task_args.items() if k in ("spaced", "vocab")}
    wrong = WRONG_ANSWERS[name](record, rng, **keep)
    if " ".join(wrong.split()) == " ".join(record["response"].split()):  # a bug, not bad luck
        raise AssertionError(f"task '{name}': wrong answer equals the right one for {record}")
    return wrong

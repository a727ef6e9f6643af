"""What a task of multi-task training is: its kind, data, head, loss weight and metrics.

One YAML file per task in ``conf/task/`` holds one :class:`TaskSpec`; ``task=[logic,topic]`` puts
several side by side under ``cfg.task`` and both the multi-task DataModule and the module read
them from there. :func:`task_shares` turns a sampling strategy into exact batch shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "KIND_METRICS",
    "PRIMARY_METRIC",
    "TaskSource",
    "TaskSpec",
    "parse_tasks",
    "task_shares",
]

Kind = Literal["generative", "classification", "regression"]
Sampling = Literal["proportional", "temperature", "round_robin", "weights"]

# Metrics each kind can report (val/<task>/<metric>); the first is the default primary metric,
# the one the aggregate ``val/score`` averages (always "higher is better").
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "generative": ("exact_match", "loss", "ppl"),
    "classification": ("accuracy", "f1", "loss"),
    "regression": ("pearson", "mse", "loss"),
}
PRIMARY_METRIC = {kind: names[0] for kind, names in KIND_METRICS.items()}


class TaskSource(BaseModel):
    """A file of a task: ``path``, and optionally the split all its rows go to (``split``:
    your own validation/test file; undeclared files are hash-split)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    split: Literal["train", "validation", "test"] | None = None


class TaskSpec(BaseModel):
    """One task. Data comes from a built-in generator (``builtin``) or from files (``sources``).

    Attributes:
        kind: ``generative`` (the LM head: prompt → response), ``classification`` (a linear head
            over a pooled hidden state, cross-entropy) or ``regression`` (a scalar head, MSE).
        builtin: A built-in task of :mod:`fmlab.tasks.builtin` (``logic``, ``classify``, ...).
        builtin_args: Keyword arguments of the generator.
        n_train: Examples generated per split for a built-in task (train).
        n_val: Validation examples of a built-in task.
        n_test: Test examples of a built-in task.
        sources: Files with the fields below (paths, or ``{path, split}`` for a file that is
            all one split); undeclared files are split by a hash of the input text into the
            splits no file declares.
        input_field: Record field of the input (generative: the prompt).
        target_field: Record field of the target: the response, the class (an index or a name
            from ``labels``) or the number.
        template: Format string with ``{input}``: the text the model reads.
        labels: Class names of a classification task (their number sizes the head).
        pooling: ``last`` (the last non-padding token's hidden state; natural for causal models)
            or ``mean`` (over non-padding tokens).
        head_dropout: Dropout before the head.
        loss_weight: Static weight of this task's loss (``module.weighting=static``).
        sampling_weight: Share of batches under ``data.sampling=weights`` (relative).
        max_length: Longest input in tokens (default: ``data.max_length``).
        exact_match_examples: Generative: held-out prompts scored by greedy generation (0: off).
        max_new_tokens: Generative: generation budget for exact match.
        val_fraction: ``sources``: share held out for validation.
        test_fraction: ``sources``: share held out for test.
        primary_metric: The metric ``val/score`` uses for this task (default by kind).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    builtin: str | None = None
    builtin_args: dict[str, Any] = {}
    n_train: Annotated[int, Field(gt=0)] = 2000
    n_val: Annotated[int, Field(gt=0)] = 200
    n_test: Annotated[int, Field(gt=0)] = 200
    sources: list[str | TaskSource] | None = None
    input_field: str = "prompt"
    target_field: str = "response"
    template: str = "{input}"
    labels: list[str] | None = None
    pooling: Literal["last", "mean"] = "last"
    head_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    loss_weight: Annotated[float, Field(ge=0)] = 1.0
    sampling_weight: Annotated[float, Field(ge=0)] = 1.0
    max_length: Annotated[int, Field(gt=1)] | None = None
    exact_match_examples: Annotated[int, Field(ge=0)] = 100
    max_new_tokens: Annotated[int, Field(gt=0)] = 8
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    primary_metric: str | None = None

    @property
    def source_specs(self) -> list[TaskSource]:
        """``sources`` as :class:`TaskSource` (plain paths: undeclared split)."""
        return [TaskSource(path=s) if isinstance(s, str) else s for s in self.sources or []]

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if (self.builtin is None) == (not self.sources):
            raise ValueError("give exactly one of builtin or sources")
        if "{input}" not in self.template:
            raise ValueError(f"template must contain '{{input}}', got {self.template!r}")
        if self.kind == "classification" and (not self.labels or len(self.labels) < 2):
            raise ValueError("a classification task needs labels: [at least two class names]")
        if self.kind != "classification" and self.labels:
            raise ValueError(f"labels are for classification tasks, not {self.kind}")
        if self.primary_metric is not None and self.primary_metric not in KIND_METRICS[self.kind]:
            raise ValueError(
                f"primary_metric {self.primary_metric!r}: a {self.kind} task reports "
                f"{list(KIND_METRICS[self.kind])}"
            )
        return self

    @property
    def num_outputs(self) -> int:
        """Width of the head (classes, or 1 for regression; 0 for generative: the LM head)."""
        return {"classification": len(self.labels or []), "regression": 1}.get(self.kind, 0)

    @property
    def primary(self) -> str:
        """The metric ``val/score`` averages for this task."""
        if self.primary_metric:
            return self.primary_metric
        if self.kind == "generative" and self.exact_match_examples == 0:
            return "ppl"  # scored as 1/ppl, see fmlab.modules.multitask
        return PRIMARY_METRIC[self.kind]


def parse_tasks(tasks: Mapping[str, Any] | None, key: str = "task") -> dict[str, TaskSpec]:
    """Validate ``cfg.task`` (name → spec dict) into specs, naming the offending task and key.

    Raises:
        ValueError: No task, or a spec that does not validate.
    """
    if not tasks:
        raise ValueError(f"{key}: no task selected; e.g. task=[logic,topic] (files of conf/task/)")
    out = {}
    for name, spec in tasks.items():
        if isinstance(spec, TaskSpec):
            out[str(name)] = spec
            continue
        try:
            out[str(name)] = TaskSpec.model_validate(dict(spec))
        except ValidationError as err:
            problems = [
                f"{'.'.join([key, str(name), *map(str, e['loc'])])}: "
                + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
                for e in err.errors()
            ]
            raise ValueError("; ".join(problems)) from err
    return out


def task_shares(
    sizes: Sequence[int],
    strategy: Sampling,
    *,
    temperature: float = 2.0,
    weights: Sequence[float] | None = None,
    max_denominator: int = 10_000,
) -> list[Fraction]:
    """Exact batch shares (summing to 1) of tasks with ``sizes`` training examples.

    - ``proportional``: ``n_i / sum(n)``;
    - ``temperature``: ``n_i^(1/T)`` normalised (T=1 proportional, T→∞ uniform; Arivazhagan
      et al. 2019 use T=5 for many languages);
    - ``round_robin``: equal shares (the largest-deficit schedule then cycles the tasks in order);
    - ``weights``: the given relative weights (a weight of 0 trains nothing on that task, while
      it is still evaluated: how sequential training is expressed).

    Irrational shares (temperature) are rounded to fractions with denominators up to
    ``max_denominator``, and the rounding is absorbed by the largest share so they sum to 1.
    """
    if not sizes:
        raise ValueError("no tasks")
    if strategy == "proportional":
        raw = [float(n) for n in sizes]
    elif strategy == "temperature":
        if temperature <= 0:
            raise ValueError(f"data.temperature must be > 0, got {temperature}")
        raw = [math.pow(n, 1.0 / temperature) for n in sizes]
    elif strategy == "round_robin":
        raw = [1.0] * len(sizes)
    elif strategy == "weights":
        if weights is None or len(weights) != len(sizes):
            raise ValueError("sampling=weights needs one weight per task")
        if any(w < 0 for w in weights):
            raise ValueError(f"sampling weights must be >= 0, got {list(weights)}")
        raw = [float(w) for w in weights]
    else:
        raise ValueError(f"unknown sampling strategy {strategy!r}")
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"sampling={strategy}: the task weights sum to 0")
    shares = [Fraction(r / total).limit_denominator(max_denominator) for r in raw]
    big = max(range(len(shares)), key=lambda i: shares[i])
    shares[big] += 1 - sum(shares)
    return shares

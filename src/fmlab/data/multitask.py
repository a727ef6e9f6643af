"""Multi-task data: one dataset per task, one task per training batch, exact task shares.

Every training batch holds examples of one task (its head and loss apply to the whole batch).
Batch ``k`` goes to the task with the largest deficit ``share_i * (k + 1) - batches_i`` (the
integer schedule of :func:`fmlab.data.mixture.schedule_slots`), so after any ``n`` batches each
task has had ``round(share_i * n)`` of them, give or take less than one. Within a task, its
``j``-th row is position ``j mod N_i`` of a permutation drawn from ``(seed, task, j div N_i)``;
on ``world`` ranks a step takes ``world * batch_size`` consecutive rows of the task's stream and
rank ``r`` the ``r``-th block, so every rank trains the same task at the same step. The sampler's
state (batches done, per task) is checkpointed: resume continues with the exact next batch.

Validation and test keep the tasks apart: one loader per task, in task order, so a task's
metrics only ever see its own examples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Annotated, Any, Literal

import lightning as L
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from fmlab.config import ConfigError
from fmlab.data.loaders import eval_loader, rank_world
from fmlab.data.mixture import RowStreams, schedule_slots
from fmlab.data.multitask_encode import collate_task, encode_task, load_task_records
from fmlab.tasks.spec import Sampling, TaskSpec, parse_tasks, task_shares

__all__ = ["MultiTaskDataModule", "MultiTaskSampler"]


class MultiTaskSampler(Sampler[int]):
    """Indices into the tasks' training rows laid end to end; ``batch_size`` consecutive indices
    always belong to one task. Stateful (``state_dict``) for exact resume.

    Args:
        sizes: Training rows per task.
        shares: Exact batch share per task (see :func:`fmlab.tasks.spec.task_shares`).
        batch_size: Rows per batch per rank.
        steps_per_epoch: Batches per epoch (the loader's length).
        seed: Seed of the per-task permutations.
        rank: This process's rank.
        world: Number of ranks.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        shares: Sequence[Fraction],
        *,
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if len(sizes) != len(shares):
            raise ValueError("one share per task")
        if any(s > 0 and n < batch_size * world for s, n in zip(shares, sizes)):
            raise ValueError("data: a sampled task has fewer training rows than one global batch")
        self.sizes, self.shares = list(sizes), list(shares)
        self.streams = RowStreams(self.sizes, seed)
        self.offsets = self.streams.offsets
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.seed, self.rank, self.world = seed, rank, world
        self.step = 0  # batches handed out (global: every rank counts the same)
        self.counts = [0] * len(self.sizes)  # batches per task

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def tasks_of(self, start: int, n: int) -> list[int]:
        """Task of batches ``start .. start + n - 1`` (pure: the sampler state is untouched)."""
        counts = [0] * len(self.sizes)
        schedule_slots(self.shares, 0, counts, start)
        return schedule_slots(self.shares, start, counts, n)

    def __iter__(self) -> Iterator[int]:
        end = (self.step // self.steps_per_epoch + 1) * self.steps_per_epoch
        while self.step < end:
            done = self.counts[:]
            (task,) = schedule_slots(self.shares, self.step, self.counts, 1)
            self.step += 1  # counted before the rows go out: a checkpoint sees whole batches
            first = (done[task] * self.world + self.rank) * self.batch_size
            for j in range(first, first + self.batch_size):
                yield self.streams.row(task, j)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "counts": list(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["counts"]) != len(self.sizes):
            raise ValueError(
                f"data: the checkpoint was trained on {len(state['counts'])} tasks, "
                f"this run has {len(self.sizes)}"
            )
        self.step, self.counts = int(state["step"]), [int(c) for c in state["counts"]]


class _TaskRows(Dataset):
    """The tasks' encoded training rows end to end; each item carries its task index."""

    def __init__(self, parts: Sequence[list[dict[str, Any]]]) -> None:
        self.rows = [(i, row) for i, part in enumerate(parts) for row in part]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]:
        return self.rows[index]


class _OneTask(Dataset):
    def __init__(self, task: int, rows: list[dict[str, Any]]) -> None:
        self.task, self.rows = task, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]:
        return self.task, self.rows[index]


class MultiTaskDataModule(L.LightningDataModule):
    """Several tasks (``cfg.task``), each with its own data and head, sampled batch by batch.

    Args:
        tasks: Task name → :class:`fmlab.tasks.spec.TaskSpec` (a ``conf/task/*.yaml`` each).
        sampling: ``proportional`` to training size, ``temperature``-scaled, ``round_robin``, or
            fixed ``weights`` (each task's ``sampling_weight``).
        temperature: T of ``sampling=temperature``.
        max_length: Default longest example in tokens (a task's ``max_length`` wins).
        batch_size: Examples per training batch per device (all of one task).
        eval_batch_size: Validation/test batch size.
        padding_side: Pad on the ``right`` or ``left`` (pooling finds the last real token
            either way).
        seed: Seed of the built-in generators and of the per-task shuffles.
        num_workers: DataLoader workers.
        pin_memory: Pin host memory.
        cache_dir: fmlab cache directory (tokenizers, HF datasets cache).
    """

    def __init__(
        self,
        tasks: dict[str, TaskSpec] | None = None,
        sampling: Sampling = "proportional",
        temperature: Annotated[float, Field(gt=0)] = 2.0,
        max_length: Annotated[int, Field(gt=1)] = 64,
        batch_size: Annotated[int, Field(gt=0)] = 16,
        eval_batch_size: Annotated[int, Field(gt=0)] | None = None,
        padding_side: Literal["right", "left"] = "right",
        seed: int = 0,
        num_workers: Annotated[int, Field(ge=0)] = 0,
        pin_memory: bool = False,
        cache_dir: str = ".cache/fmlab",
    ) -> None:
        super().__init__()
        self.specs: dict[str, TaskSpec] = parse_tasks(tasks, "data.tasks")
        self.names = list(self.specs)
        self.sampling, self.temperature = sampling, temperature
        self.max_length = max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.padding_side, self.seed = padding_side, seed
        self.num_workers, self.pin_memory, self.cache_dir = num_workers, pin_memory, cache_dir
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.records: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.encoded: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.shares: dict[str, Fraction] = {}
        self.stats: dict[str, Any] = {}
        self.sampler: MultiTaskSampler | None = None

    @property
    def block_size(self) -> int:
        """Longest sequence the model must handle."""
        return max(s.max_length or self.max_length for s in self.specs.values())

    def prepare(self, tokenizer_factory: Any) -> PreTrainedTokenizerBase:
        """Load every task's records, build the tokenizer on all of them, encode; returns it."""
        fed: dict[str, dict[str, Any]] = {name: {} for name in self.specs}
        self.records = {
            name: load_task_records(
                name, spec, seed=self.seed, cache_dir=self.cache_dir, split_sources=fed[name]
            )
            for name, spec in self.specs.items()
        }
        train = [r for recs in self.records.values() for r in recs["train"]]
        fingerprint = "multitask|" + "|".join(
            f"{n}:{s.model_dump_json()}:{len(self.records[n]['train'])}"
            for n, s in self.specs.items()
        )
        tok = tokenizer_factory(
            texts=lambda: (r["_text"] for r in train),
            fingerprint=f"{fingerprint}|{self.seed}",
            cache_dir=self.cache_dir,
        )
        self.tokenizer = tok
        self.stats = {"sources": [], "tasks": {}}
        for name, spec in self.specs.items():
            limit = spec.max_length or self.max_length
            self.encoded[name], task_stats = {}, {}
            for split, recs in self.records[name].items():
                tally: dict[str, int] = {}
                enc = [encode_task(spec, r, tok, limit, tally) for r in recs]
                kept = [e for e in enc if e is not None]
                if not kept:
                    why = (
                        f"all {len(recs)} records dropped: the prompt fills max_length={limit}"
                        if recs
                        else "no records (the hash split put none there; add data or raise "
                        f"task.{name}.val_fraction/test_fraction)"
                    )
                    raise ConfigError(
                        f"task.{name}: the {split} split has no usable example: {why}"
                    )
                self.encoded[name][split] = kept
                task_stats[split] = {
                    "examples": len(kept),
                    "dropped": len(enc) - len(kept),
                    "truncated": tally.get("truncated", 0),
                    "overlong": tally.get("overlong", 0),
                }
            if fed[name]:
                task_stats["split_sources"] = fed[name]
            self.stats["tasks"][name] = task_stats
            self.stats["sources"] += [s.path for s in spec.source_specs] or [f"task:{spec.builtin}"]
        sizes = [len(self.encoded[n]["train"]) for n in self.names]
        shares = task_shares(
            sizes,
            self.sampling,
            temperature=self.temperature,
            weights=[self.specs[n].sampling_weight for n in self.names],
        )
        self.shares = dict(zip(self.names, shares))
        self.stats["sampling"] = {
            "strategy": self.sampling,
            "shares": {n: float(s) for n, s in self.shares.items()},
        }
        return tok

    def exact_match_set(self, task: str, split: str) -> list[tuple[list[int], str]]:
        """(prompt ids, reference) of a generative task's first ``exact_match_examples``."""
        from fmlab.data.multitask_encode import prompt_ids

        spec = self.specs[task]
        recs = self.records[task].get(split, [])[: spec.exact_match_examples]
        return [(prompt_ids(spec, r, self.tokenizer), str(r["_target"]).strip()) for r in recs]

    # ---------------------------------------------------------------- loaders
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("MultiTaskDataModule.prepare(tokenizer_factory) must run before fit")

    def _collate(self, items: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        assert self.tokenizer is not None
        task = items[0][0]
        if any(t != task for t, _ in items):
            raise RuntimeError("a multi-task batch mixes tasks (sampler bug)")
        spec = self.specs[self.names[task]]
        return collate_task(
            spec, task, [r for _, r in items], self.tokenizer.pad_token_id, self.padding_side
        )

    def train_dataloader(self) -> StatefulDataLoader:
        rank, world = rank_world(self)
        parts = [self.encoded[n]["train"] for n in self.names]
        sampled = sum(len(p) for p, n in zip(parts, self.names) if self.shares[n] > 0)
        self.sampler = MultiTaskSampler(
            [len(p) for p in parts],
            [self.shares[n] for n in self.names],
            batch_size=self.batch_size,
            steps_per_epoch=max(1, sampled // (world * self.batch_size)),
            seed=self.seed,
            rank=rank,
            world=world,
        )
        return StatefulDataLoader(
            _TaskRows(parts),
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def task_loader(self, name: str, split: str) -> DataLoader:
        """In-order loader of one task's ``split`` (this rank's shard)."""
        rank, world = rank_world(self)
        return eval_loader(
            _OneTask(self.names.index(name), self.encoded[name][split]),
            batch_size=self.eval_batch_size,
            rank=rank,
            world=world,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self.task_loader(n, "validation") for n in self.names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.task_loader(n, "test") for n in self.names]

    def batches_taken(self) -> dict[str, int]:
        """Training batches drawn so far per task (global)."""
        counts = self.sampler.counts if self.sampler else [0] * len(self.names)
        return dict(zip(self.names, counts))

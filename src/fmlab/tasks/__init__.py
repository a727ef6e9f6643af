"""Built-in tasks with exact answers, generated offline and deterministically."""

from fmlab.tasks.builtin import TASKS, generate_task

__all__ = ["TASKS", "generate_task"]

"""Built-in tasks with exact answers (generated offline, deterministically) and task specs."""

from fmlab.tasks.builtin import TASKS, generate_task
from fmlab.tasks.spec import TaskSpec, parse_tasks, task_shares

__all__ = ["TASKS", "TaskSpec", "generate_task", "parse_tasks", "task_shares"]

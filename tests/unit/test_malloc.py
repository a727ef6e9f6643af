"""glibc keeps freed activation blocks after keep_freed_memory: no page faults on reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmlab.utils.malloc import keep_freed_memory

# Training steps of the `small` preset (batch 8×128): minor page faults per step, in steady state.
STEPS = """
import resource, torch
from fmlab.models import llama
torch.manual_seed(0)
model = llama(preset="small", vocab_size=4096, max_position_embeddings=128)
ids = torch.randint(3, 4096, (8, 128))
def step():
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
def faults(n=3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // n
step()
faults()  # the heap is still growing over the first steps: count only after them
"""


def test_training_steps_reuse_freed_memory_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("not glibc")
    assert keep_freed_memory()  # idempotent
    # Both in fresh single-threaded processes: faults counted inside this (long-lived, busy)
    # test process also include whatever else it has allocated, and came out noisy under CI.
    env_code = "import os; os.environ['OMP_NUM_THREADS'] = '1'\n"
    tune = "from fmlab.utils.malloc import keep_freed_memory; keep_freed_memory()\n"

    def measure(prefix: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", env_code + prefix + STEPS + "print(faults(9))"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)

    default, tuned = measure(""), measure(tune)
    print("page faults per step: default", default, "tuned", tuned)
    # in fresh processes, after warm-up: 5-10x fewer faults measured here; ask for 1.5x
    assert tuned * 1.5 < default

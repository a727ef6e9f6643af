"""glibc keeps freed activation blocks after keep_freed_memory: no page faults on reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmlab.utils.malloc import keep_freed_memory

# Training steps of the `small` preset (batch 8×128): count the minor page faults of 3 steps.
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
"""


def test_training_steps_reuse_freed_memory_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("not glibc")
    assert keep_freed_memory()  # idempotent
    env_code = "import os; os.environ['OMP_NUM_THREADS'] = '1'\n"
    default = subprocess.run(
        [sys.executable, "-c", env_code + STEPS + "print(faults())"],
        capture_output=True,
        text=True,
        check=True,
    )
    scope: dict = {}
    exec(STEPS, scope)  # this process: the settings are in effect
    tuned = scope["faults"]()
    print("page faults per step: default", default.stdout.strip(), "tuned", tuned)
    # measured 7x fewer faults on an idle machine, 2.3x under heavy memory load: ask for 1.5x
    assert tuned * 1.5 < int(default.stdout)

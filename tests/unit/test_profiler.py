"""The Trainer's default profiler: nothing per hook call, and a configured profiler still wins."""

from __future__ import annotations

import pytest
from lightning.pytorch.profilers import SimpleProfiler

from fmlab.config.compose import compose_config
from fmlab.utils.profiler import NoProfiler
from fmlab.workflow import build_trainer


def test_no_profiler_context_is_shared_and_nests():
    profiler = NoProfiler()
    with profiler.profile("outer") as a, profiler.profile("inner") as b:
        assert a is None and b is None
    assert profiler.profile("x") is profiler.profile("y")  # no object per hook call
    assert profiler.summary() == ""


@pytest.mark.parametrize(
    ("overrides", "expected"), [([], NoProfiler), (["+trainer.profiler=simple"], SimpleProfiler)]
)
def test_build_trainer_uses_it_only_when_none_is_configured(tmp_path, overrides, expected):
    cfg = compose_config("train", ["print_config=false", *overrides], output_dir=str(tmp_path))
    assert type(build_trainer(cfg).profiler) is expected

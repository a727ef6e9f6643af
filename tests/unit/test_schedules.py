import itertools
import math

import pytest
import torch

from fmlab.modules.schedules import constant, constant_factor, cosine, cosine_factor


def test_cosine_factor_shape():
    f = lambda s: cosine_factor(s, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # first update uses 1/warmup of the peak
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # clamps after the end
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_constant_factor():
    assert [constant_factor(s, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert constant_factor(0, warmup_steps=0) == 1.0


def test_factories_drive_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = cosine(opt, total_steps=20, warmup_ratio=0.25, min_lr_ratio=0.0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0 / 5)
    assert lrs[4] == pytest.approx(2.0)
    assert lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 14 / 15)), rel=1e-6)
    opt2 = torch.optim.SGD([p], lr=1.0)
    sched2 = constant(opt2, total_steps=10, warmup_steps=2)
    seen = []
    for _ in range(4):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert seen == [0.5, 1.0, 1.0, 1.0]


def test_wsd_factor_shape():
    from fmlab.modules.schedules import wsd_factor

    f = lambda s, shape="linear": wsd_factor(
        s, total_steps=100, warmup_steps=10, decay_steps=20, min_lr_ratio=0.1, decay_shape=shape
    )
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert [f(s) for s in (10, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]  # stable until the anneal
    assert f(90) == pytest.approx(0.1 + 0.9 * 0.5)  # linear: half way down
    assert f(90, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(85, "sqrt") == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.25)))
    assert f(100) == pytest.approx(0.1) and f(300) == pytest.approx(0.1)
    values = [f(s, "cosine") for s in range(80, 101)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_wsd_factory_drives_lr_and_rewarm_starts_from_zero():
    from fmlab.modules.schedules import wsd

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = wsd(opt, total_steps=10, warmup_steps=2, decay_ratio=0.4, min_lr_ratio=0.0)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25])
    # cosine from a pretrained model: re-warm from ~0, re-decay to min_lr_ratio at the end
    f = lambda s: cosine_factor(s, total_steps=200, warmup_steps=20, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.05) and f(19) == 1.0 and f(200) == pytest.approx(0.1)

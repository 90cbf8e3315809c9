"""Learning-rate schedule: checked against torch's own schedulers and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from cityseg.config import SchedConfig
from cityseg.engine.schedule import build_schedule
from cityseg.errors import CitysegError


def _optimizer(lrs=(0.1,)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def test_warmup_is_linear_per_step():
    opt = _optimizer()
    sched = build_schedule(opt, SchedConfig(name="constant", warmup_iters=4, warmup_factor=0.2), total_steps=100)
    seen = [sched.lrs()[0]]
    for _ in range(6):
        sched.step()
        seen.append(sched.lrs()[0])
    # 0.1 x (0.2 + 0.8 x s/4) for s = 0..4, then 0.1
    assert seen == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1])


def test_poly_matches_torch_polynomial_lr():
    opt, ref_opt = _optimizer((0.01, 0.1)), _optimizer((0.01, 0.1))
    sched = build_schedule(opt, SchedConfig(name="poly", power=0.9), total_steps=50)
    ref = torch.optim.lr_scheduler.PolynomialLR(ref_opt, total_iters=50, power=0.9)
    for _ in range(60):
        assert sched.lrs() == pytest.approx([g["lr"] for g in ref_opt.param_groups], rel=1e-9, abs=1e-15)
        ref_opt.step(), ref.step(), sched.step()


def test_cosine_matches_torch_cosine_annealing():
    opt, ref_opt = _optimizer(), _optimizer()
    sched = build_schedule(opt, SchedConfig(name="cosine", min_lr=0.001), total_steps=40)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=40, eta_min=0.001)
    for _ in range(40):
        assert sched.lrs()[0] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9)
        ref_opt.step(), ref.step(), sched.step()


def test_poly_floor_is_min_lr():
    opt = _optimizer()
    sched = build_schedule(opt, SchedConfig(name="poly", power=1.0, min_lr=0.01), total_steps=10)
    for _ in range(5):
        sched.step()
    assert sched.lrs()[0] == pytest.approx(0.01 + 0.09 * 0.5)
    for _ in range(10):
        sched.step()
    assert sched.lrs()[0] == pytest.approx(0.01)


@pytest.mark.parametrize("patience", [0, 1, 3])
def test_plateau_matches_torch_reduce_on_plateau(patience):
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.9, 0.899999, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, float("nan"), 0.7]
    opt, ref_opt = _optimizer((0.1, 0.5)), _optimizer((0.1, 0.5))
    sched = build_schedule(opt, SchedConfig(name="plateau", factor=0.5, patience=patience, min_lr=0.004), 100)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, factor=0.5, patience=patience, min_lr=0.004)
    for loss in losses:
        sched.epoch_end(loss)
        ref.step(loss)
        assert sched.lrs() == pytest.approx([g["lr"] for g in ref_opt.param_groups], rel=1e-12)


def test_plateau_with_warmup_multiplies():
    opt = _optimizer()
    sched = build_schedule(opt, SchedConfig(name="plateau", warmup_iters=10, warmup_factor=0.1, patience=0), 100)
    sched.epoch_end(1.0)
    assert sched.epoch_end(2.0) is True  # patience 0: the first bad epoch halves
    assert sched.lrs()[0] == pytest.approx(0.1 * 0.1 * 0.5)
    for _ in range(10):
        sched.step()
    assert sched.lrs()[0] == pytest.approx(0.05)


def test_state_dict_round_trip_resumes_the_same_values():
    cfg = SchedConfig(name="plateau", warmup_iters=5, patience=1)
    a = build_schedule(_optimizer(), cfg, 100)
    for loss in (1.0, 1.1, 1.2, 0.5):
        for _ in range(3):
            a.step()
        a.epoch_end(loss)
    b = build_schedule(_optimizer(), cfg, 100)
    b.load_state_dict(a.state_dict())
    assert b.lrs() == a.lrs()
    a.step(), b.step()
    a.epoch_end(0.6), b.epoch_end(0.6)
    a.epoch_end(0.6), b.epoch_end(0.6)
    assert b.lrs() == a.lrs() and b.state_dict() == a.state_dict()
    assert math.isclose(a.lrs()[0], 0.1 * 0.25)  # halved once after 1.1, 1.2 and once after 0.6, 0.6


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(CitysegError, match="plateau, poly, cosine, constant"):
        build_schedule(_optimizer(), SchedConfig(name="step"), 10)


def test_poly_follows_a_given_fraction_not_the_step_count():
    opt = _optimizer((1.0,))
    sched = build_schedule(opt, SchedConfig(name="poly", power=1.0), total_steps=1000)
    sched.step(fraction=0.25)  # one step, but a quarter of the (time) budget gone
    assert sched.lrs()[0] == pytest.approx(0.75)
    sched.step(fraction=1.0)
    assert sched.lrs()[0] == 0.0
    restored = build_schedule(_optimizer((1.0,)), SchedConfig(name="poly", power=1.0), total_steps=1000)
    restored.load_state_dict(sched.state_dict())
    assert restored.lrs()[0] == 0.0 and restored.fraction == 1.0


def test_budget_is_the_larger_of_steps_and_wall_time(monkeypatch):
    from cityseg.engine import schedule as S

    now = {"t": 100.0}
    monkeypatch.setattr(S.time, "perf_counter", lambda: now["t"])
    steps_only = S.Budget(total_steps=10)
    timed = S.Budget(total_steps=10, max_minutes=2.0, elapsed=30.0)  # 30 s spent before a resume
    assert steps_only.fraction(5) == 0.5 and not steps_only.spent(9) and steps_only.spent(10)
    assert timed.fraction(1) == pytest.approx(0.25)  # 30 of 120 s beats 1 of 10 steps
    now["t"] += 60.0
    assert timed.elapsed() == pytest.approx(90.0) and timed.fraction(1) == pytest.approx(0.75)
    assert timed.fraction(9) == pytest.approx(0.9)  # now the steps are ahead
    now["t"] += 30.0
    assert timed.spent(1) and timed.fraction(1) == 1.0

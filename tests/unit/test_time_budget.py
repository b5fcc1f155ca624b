"""Where a role's time goes: activities add up, the remainder is 'other'."""

import time

import pytest

from asyncor.telemetry.time_budget import TimeBudget


def test_activities_and_other_add_up_to_the_wall_time():
    budget = TimeBudget()
    with budget.measure("training"):
        time.sleep(0.05)
    with budget.measure("waiting_for_batch"):
        time.sleep(0.02)
    with budget.measure("training"):
        time.sleep(0.03)
    time.sleep(0.01)
    t = budget.as_dict()
    assert t["training"] == pytest.approx(0.08, abs=0.03) and t["waiting_for_batch"] == pytest.approx(0.02, abs=0.02)
    assert t["training"] + t["waiting_for_batch"] + t["other"] == pytest.approx(t["wall"], rel=1e-9)
    assert 0.5 < budget.busy_frac("training") < 1.0


def test_time_is_counted_even_when_the_activity_raises():
    budget = TimeBudget()
    with pytest.raises(ValueError):
        with budget.measure("generating"):
            time.sleep(0.02)
            raise ValueError("engine died")
    assert budget.as_dict()["generating"] >= 0.015

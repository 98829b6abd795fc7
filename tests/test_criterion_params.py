"""Criterion parameters are checked by type, finiteness and range before a scorer is built (``pruning.criteria.params``
and ``create_criterion``)."""
from __future__ import annotations

import math

import pytest

from pruning.criteria import create_criterion, list_criteria
from pruning.criteria.base import criterion_class
from pruning.criteria.params import AM_STEPS, COMMON_RANGES, Range, check_number, check_params
from pruning.errors import SpecError


def test_range_bounds_open_and_closed() -> None:
    closed, open_low = Range(0.0, 1.0), Range(0.0, 1.0, open_low=True)
    assert check_number("w", 0.0, closed) == 0.0 and check_number("w", 1.0, closed) == 1.0
    with pytest.raises(ValueError, match=r"w must be a number in \(0, 1\], got 0.0"):
        check_number("w", 0.0, open_low)
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        check_number("w", 1.5, closed)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0.5", True, None, [0.5]])
def test_non_numbers_and_non_finite_are_refused(value) -> None:
    with pytest.raises(ValueError, match="must be a number in"):
        check_number("w", value, Range(0.0, 1.0))


def test_whole_numbers() -> None:
    assert check_number("steps", 64.0, AM_STEPS) == 64 and isinstance(check_number("steps", 64.0, AM_STEPS), int)
    for bad in (64.5, 0, 2049, 10**12):
        with pytest.raises(ValueError, match=r"steps must be a whole number in \[1, 2048\]"):
            check_number("steps", bad, AM_STEPS)


def test_optional_takes_none_and_says_so() -> None:
    seed = COMMON_RANGES["seed"]
    assert check_number("seed", None, seed) is None
    with pytest.raises(ValueError, match=r"or unset \(null\), got -1"):
        check_number("seed", -1, seed)


def test_undeclared_parameters_follow_their_default_type() -> None:
    defaults = {"n": 3, "x": 0.5, "mean": (0.5, 0.5), "mode": "a"}
    out = check_params({"n": 4.0, "x": 2, "mean": [0.1, 0.2], "mode": "b"}, {}, defaults)
    assert out == {"n": 4, "x": 2, "mean": (0.1, 0.2), "mode": "b"}
    for bad, text in (({"n": 4.5}, "n must be a finite whole number"), ({"x": math.nan}, "x must be a finite number"),
                      ({"mean": [0.1, math.inf]}, "mean must be a list of 1 to 16 finite numbers"),
                      ({"mean": []}, "mean must be a list")):
        with pytest.raises(ValueError, match=text):
            check_params(bad, {}, defaults)


@pytest.mark.parametrize("name,params,text", [
    ("layer_probe", {"weight_decay": math.nan}, r"weight_decay must be a number in \[0, 1000\], got nan"),
    ("layer_probe", {"weight_decay": "nan"}, r"weight_decay must be a number in \[0, 1000\], got 'nan'"),
    ("layer_probe", {"probe_steps": 10**12}, r"probe_steps must be a whole number in \[1, 10000\]"),
    ("layer_probe", {"depth_share": 0}, r"depth_share must be a number in \(0, 1\]"),
    ("functionality", {"steps": 10**12}, r"steps must be a whole number in \[1, 2048\]"),
    ("visual_similarity", {"mean": [0.5, math.inf, 0.5]}, "mean must be a list of 1 to 16 finite numbers"),
    ("redundancy", {"images": True}, r"images must be a whole number in \[1, 50000\], got True"),
    ("redundancy", {"merge": "yes"}, r"merge must be true or false, got 'yes'"),
    ("dissection", {"correct_only": 1}, r"correct_only must be true or false, got 1"),
    ("dissection", {"quantile": 1.0}, r"quantile must be a number in \(0, 1\)"),
    ("l1", {"p": math.inf}, r"p must be a number in \(0, 16\]"),
    ("taylor", {"max_batches": None}, r"max_batches must be a whole number in \[1, 1000000\], got None"),
    ("functionality", {"max_batches": None}, r"max_batches must be a whole number in \[1, 1000000\], got None"),
    ("random", {"refit_window": math.nan},
     r"refit_window must be a number in \[0, 1\] \(0 = the criterion's order as it is\), got nan"),
])
def test_create_criterion_refuses_with_the_range(name, params, text) -> None:
    with pytest.raises(SpecError, match=text) as caught:
        create_criterion(name, **params)
    assert f"criterion {name!r}" in str(caught.value) and "its parameters are:" in str(caught.value)


def test_good_values_reach_the_scorer_with_whole_numbers_as_ints() -> None:
    scorer = create_criterion("functionality", steps=64.0, threshold=None, refit_window=0.5)
    assert scorer.params["steps"] == 64 and isinstance(scorer.params["steps"], int)
    assert scorer.refit_window == 0.5
    assert create_criterion("layer_probe", depth_share=0.3, seed=None).depth_share == 0.3


def test_every_declared_range_names_a_parameter_of_its_criterion() -> None:
    import inspect

    for name in list_criteria():
        cls = criterion_class(name)
        own = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(cls.param_ranges) <= own, name
        for key, allowed in cls.param_ranges.items():
            default = inspect.signature(cls.__init__).parameters[key].default
            if default is not None:                           # every default passes its own range
                check_number(key, default, allowed)

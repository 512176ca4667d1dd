"""Initializers: the right distribution, seeded, identical on every backend."""

import math

import numpy as np
import pytest

import portnn as pn
from portnn.init import INITIALIZERS

FAN_IN, FAN_OUT = 400, 300

EXPECTED_STD = {
    "uniform": 1 / math.sqrt(3),
    "normal": 0.01,
    "xavier_uniform": math.sqrt(2 / (FAN_IN + FAN_OUT)),
    "xavier_normal": math.sqrt(2 / (FAN_IN + FAN_OUT)),
    "he_uniform": math.sqrt(2 / FAN_IN),
    "he_normal": math.sqrt(2 / FAN_IN),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_STD))
def test_initializer_has_the_documented_spread(name):
    w = pn.to_numpy(pn.Dense(FAN_IN, FAN_OUT, init=name, seed=0, dtype="float64").weight)
    assert abs(w.mean()) < 0.02 * EXPECTED_STD[name]
    assert w.std() == pytest.approx(EXPECTED_STD[name], rel=0.02)
    if name.endswith("uniform"):
        bound = EXPECTED_STD[name] * math.sqrt(3)
        assert w.max() <= bound and w.min() >= -bound and w.max() > 0.99 * bound


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_initializer_is_seeded_and_identical_across_backends(name):
    here = pn.to_numpy(pn.Dense(5, 4, init=name, seed=3).weight)
    again = pn.to_numpy(pn.Dense(5, 4, init=name, seed=3).weight)
    np.testing.assert_array_equal(here, again)
    with pn.use_backend("numpy"):
        reference = pn.to_numpy(pn.Dense(5, 4, init=name, seed=3).weight)
    np.testing.assert_array_equal(here, reference)


def test_zeros_ones_and_a_callable():
    assert not pn.to_numpy(pn.Dense(3, 2, init="zeros").weight).any()
    assert (pn.to_numpy(pn.Dense(3, 2, init="ones").weight) == 1).all()

    def constant(rng, shape, fan_in, fan_out):
        return np.full(shape, fan_in * 10 + fan_out)

    np.testing.assert_array_equal(pn.to_numpy(pn.Dense(3, 2, init=constant).weight), np.full((3, 2), 32))
    np.testing.assert_array_equal(pn.to_numpy(pn.Dense(3, 2, bias_init="ones").bias), [1, 1])


def test_different_seeds_differ_and_no_seed_is_random():
    a = pn.to_numpy(pn.Dense(4, 4, seed=1).weight)
    b = pn.to_numpy(pn.Dense(4, 4, seed=2).weight)
    assert not np.array_equal(a, b)
    assert not np.array_equal(pn.to_numpy(pn.Dense(4, 4).weight), pn.to_numpy(pn.Dense(4, 4).weight))


def test_unknown_initializer_name():
    with pytest.raises(ValueError, match="did you mean 'xavier_uniform'"):
        pn.Dense(2, 2, init="xavier_unifrom")

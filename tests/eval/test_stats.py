import math

import pytest

from gmt_ray.eval.stats import rate_interval, wilson_interval

Z = 1.959963984540054  # the normal 0.975 quantile


def test_no_success_and_all_successes_do_not_claim_certainty():
    # Wilson at k = 0: [0, z^2 / (n + z^2)]; at k = n: [n / (n + z^2), 1].
    assert wilson_interval(0, 64) == pytest.approx((0.0, 0.0, Z * Z / (64 + Z * Z)), abs=1e-12)
    assert wilson_interval(0, 64)[2] == pytest.approx(0.0566, abs=1e-4)
    assert wilson_interval(64, 64) == pytest.approx((1.0, 64 / (64 + Z * Z), 1.0), abs=1e-12)


def test_the_wilson_interval_matches_its_formula():
    k, n = 17, 50
    p = k / n
    center = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((p, center - half, center + half), rel=1e-9)
    _, low_99, high_99 = wilson_interval(k, n, confidence=0.99)
    assert low_99 < center - half and high_99 > center + half


def test_rates_of_zero_and_one_are_a_binomial_count():
    rates = [1.0] * 5 + [0.0] * 59
    assert rate_interval(rates) == wilson_interval(5, 64)
    assert rate_interval([0.0] * 64)[1:] == pytest.approx((0.0, 0.0566), abs=1e-4)


def test_fractional_rates_use_the_wilson_formula_at_their_mean():
    # Four problems at 1/2 each: the same mean and n as 2 of 4, so the same interval.
    assert rate_interval([0.5] * 4) == pytest.approx(wilson_interval(2, 4), rel=1e-9)
    mean, low, high = rate_interval([0.25, 0.75, 0.5, 1.0, 0.0, 0.5])
    assert mean == pytest.approx(0.5) and 0 < low < mean < high < 1


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no scores"):
        rate_interval([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rate_interval([0.5, 1.5])
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)

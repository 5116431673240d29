"""KPI formatting: the same significant digits everywhere, nothing that a narrow box would cut."""
from __future__ import annotations

import pytest

from dashboard.views.kpis import fmt, fmt_ms


@pytest.mark.parametrize("value, shown", [
    (1.998, "2.00"), (1.01, "1.01"), (2, "2.00"), (0.0, "0"), (12.345, "12.3"), (100.0, "100"),
    (0.1, "0.100"), (-0.5, "-0.500"), (3373.2, "3.37 k"), (1856.4, "1.86 k"), (999.96, "1.00 k"),
    (2.5e6, "2.50 M"), (0.000123, "1.23e-4"), (float("nan"), "n/a"), (None, "n/a"), (float("inf"), "inf"),
])
def test_fmt_keeps_three_significant_digits(value, shown):
    assert fmt(value) == shown


def test_fmt_round_trips_within_half_a_unit_of_the_third_digit():
    for value in (1.998, 0.0123456, 7.77777, 238.4, 31415.9, 2.718e7):
        text = fmt(value)
        number, _, suffix = text.partition(" ")
        scale = {"": 1, "k": 1e3, "M": 1e6}[suffix]
        assert abs(float(number) * scale - value) <= 0.005 * abs(value)
        assert len(number.replace("-", "").replace(".", "").lstrip("0")) == 3  # three significant digits


@pytest.mark.parametrize("ms, shown", [(1.5, "1.50 ms"), (105.2, "105 ms"), (999.99, "1.00 s"), (1856.0, "1.86 s")])
def test_fmt_ms(ms, shown):
    assert fmt_ms(ms) == shown

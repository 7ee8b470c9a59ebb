"""Confidence intervals, divergence counts and tables."""

import numpy as np
import pytest

from keras_meta import evaluation


def test_mean_confidence_interval_matches_the_normal_formula():
    values = np.random.RandomState(0).normal(2.0, 3.0, size=4000)
    mean, half = evaluation.mean_confidence_interval(values)
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(4000),
                                 rel=1e-4)
    # The interval covers the true mean for a large sample.
    assert abs(mean - 2.0) < half * 1.5


@pytest.mark.parametrize("values, confidence, message", [
    ([1.0], 0.95, "at least 2 values; got 1"),
    ([1.0, 2.0], 0.5, "`confidence` must be one of"),
])
def test_bad_interval_arguments(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        evaluation.mean_confidence_interval(values, confidence)


def test_divergence_counts_and_table():
    values = np.array([0.1, 0.2, 0.3, np.inf, np.nan, 5e3])
    counts = evaluation.divergence_counts(values)
    assert counts == dict(non_finite=2, above_1e3=1, median=0.25)
    rows = [dict(shots=5, steps=1, mean=0.5, ci=0.1, tasks=6, **counts)]
    text = evaluation.format_table(rows)
    assert "| K | steps | query MSE (mean +- 95% CI) | median |" in text
    assert "| 5 | 1 | 0.500 +- 0.100 | 0.250 | 2 / 1 | 6 |" in text

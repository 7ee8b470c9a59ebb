"""benchmarks/suite/report_workloads.py: the report set's data is
deterministic, split and standardized with training statistics, its
inputs fit its models, and each workload trains a few steps with Adam and
the default LearnedOptimizer. No longer runs: the set is never used to
choose anything."""

import sys

import numpy as np
import pytest

from benchmarks import lopt_suite
from benchmarks.suite import data as suite_data
from benchmarks.suite import dev_workloads
from benchmarks.suite import report_workloads
from benchmarks.suite import runner
from benchmarks.suite import workloads

REPORT = report_workloads.REPORT_WORKLOADS
# (train, val, test) sizes, input shape and dtype, labels or targets.
EXPECTED = {
    "digits_mlp": ((1000, 297, 500), (64,), "float32", 10),
    "digits_cnn": ((1000, 297, 500), (8, 8, 1), "float32", 10),
    "breast_cancer_mlp": ((300, 100, 169), (30,), "float32", 2),
    "diabetes_regression": ((250, 92, 100), (10,), "float32", None),
    "conv1d_text": ((2000, 1000, 2000), (64,), "int32", 3),
    "lstm_forecast": ((2000, 1000, 2000), (32, 1), "float32", None),
}
# Bundled scikit-learn datasets: every row once, in a seeded order.
SKLEARN = ("digits_mlp", "digits_cnn", "breast_cancer_mlp",
           "diabetes_regression")


def _splits(name, seed=0):
    try:
        return REPORT[name].data(seed)
    except suite_data.DataUnavailable as e:
        pytest.skip(str(e))


def _rows(x):
    return {a.tobytes() for a in np.asarray(x).reshape(len(x), -1)}


def test_report_set_is_a_third_set_of_lopt_suite():
    assert set(REPORT) == set(EXPECTED)
    assert not set(REPORT) & (set(workloads.WORKLOADS)
                              | set(dev_workloads.DEV_WORKLOADS))
    assert lopt_suite.WORKLOAD_SETS["report"] is REPORT
    assert "report" in lopt_suite.FLAGS["workload_set"].parser.enum_values
    assert all(w.batch_size == 32 for w in REPORT.values())


@pytest.mark.parametrize("name", list(REPORT))
def test_data_is_deterministic_disjoint_and_drawn_from_the_seed(name):
    first, again = _splits(name), REPORT[name].data(0)
    sizes, shape, dtype, classes = EXPECTED[name]
    for (_, (x1, y1)), (_, (x2, y2)), n in zip(first.items(), again.items(),
                                               sizes):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert len(x1) == len(y1) == n
        assert x1.shape[1:] == shape and x1.dtype == dtype
        if classes:
            assert y1.dtype == "int32" and set(np.unique(y1)) == set(
                range(classes))
        else:
            assert y1.shape == (n, 1) and y1.dtype == "float32"
    train, val, test = (_rows(x) for _, (x, _) in first.items())
    assert not train & test and not train & val and not val & test
    other = REPORT[name].data(1)
    assert not np.array_equal(other.train[0], first.train[0])
    if name in ("digits_mlp", "digits_cnn"):  # the same rows reordered
        assert set().union(*(_rows(x) for _, (x, _) in other.items())) == (
            train | val | test)
    elif name == "breast_cancer_mlp":  # standardized by other rows
        for splits in (first, other):
            labels = np.concatenate([y for _, (_, y) in splits.items()])
            np.testing.assert_array_equal(np.bincount(labels), [212, 357])


@pytest.mark.parametrize("name", list(REPORT))
def test_inputs_fit_the_model(name):
    splits = _splits(name)
    model = REPORT[name].build()
    x, y = splits.test
    assert tuple(model.inputs[0].shape[1:]) == x.shape[1:]
    assert model.inputs[0].dtype == x.dtype
    classes = EXPECTED[name][3]
    assert model(x[:2]).shape == (2, classes or 1)


@pytest.mark.parametrize("name", ["breast_cancer_mlp", "diabetes_regression"])
def test_tables_standardized_with_training_statistics_only(name):
    splits = _splits(name)
    x, y = splits.train
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-4)
    if name == "diabetes_regression":  # the target too
        np.testing.assert_allclose([y.mean(), y.std()], [0.0, 1.0],
                                   atol=1e-5)
    # Other splits use the training moments, not their own.
    for x, _ in (splits.val, splits.test):
        assert np.max(np.abs(x.mean(axis=0))) > 1e-2


def test_forecast_is_the_next_value_on_the_training_inputs_scale():
    splits = _splits("lstm_forecast")
    sizes = EXPECTED["lstm_forecast"][0]
    series = report_workloads.sinusoid_series(0, sum(sizes), 33)
    mean, sd = series[:sizes[0], :32].mean(), series[:sizes[0], :32].std()
    scaled = (series - mean) / sd
    start = 0
    for (_, (x, y)), n in zip(splits.items(), sizes):
        np.testing.assert_allclose(x[..., 0], scaled[start:start + n, :32],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y[:, 0], scaled[start:start + n, 32],
                                   rtol=1e-5, atol=1e-5)
        start += n
    x = splits.train[0]
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-5)


def test_digits_are_pixels_over_16_in_one_split_for_both_models():
    flat, images = _splits("digits_mlp", 3), _splits("digits_cnn", 3)
    for (_, (x, y)), (_, (image, label)) in zip(flat.items(),
                                                images.items()):
        np.testing.assert_array_equal(x, image.reshape(len(image), 64))
        np.testing.assert_array_equal(y, label)
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(x * 16, np.round(x * 16))


def test_text_tokens_are_zipf_over_the_vocabulary_and_classes_balanced():
    x, y = _splits("conv1d_text").train
    assert 0 <= x.min() and x.max() < report_workloads.TEXT_VOCAB
    counts = np.bincount(x.ravel(), minlength=report_workloads.TEXT_VOCAB)
    top = np.sort(counts)[::-1]
    assert top[0] > 20 * top[500] > 0  # long-tailed
    assert np.all(np.bincount(y) > 0.25 * len(y))


def test_without_scikit_learn_its_workloads_are_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    report_workloads._bundled.cache_clear()
    for name in SKLEARN:
        with pytest.raises(suite_data.DataUnavailable,
                           match=r'pip install -e "\.\[bench\]"'):
            REPORT[name].data(0)
    REPORT["lstm_forecast"].data(0)  # the synthetic ones need no package


@pytest.mark.parametrize("name", list(REPORT))
def test_workload_trains_with_adam_and_learned_optimizer(name):
    splits = _splits(name)
    workload = REPORT[name]
    for spec in [("adam", 1e-3), ("learned", None)]:
        result = runner.fit(workload, splits, spec, seed=0, steps=3)
        assert result["finite"], (name, spec, result)
        assert np.isfinite(result["test_loss"]), (name, spec, result)
        assert result[f"test_{workload.metric}"] is not None

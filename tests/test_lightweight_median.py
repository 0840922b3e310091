"""lightweight.median is np.median (values, dtype, shape) for NaN-free data, only faster."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from reconstruction.lightweight import median

SHAPES_AXES = [
    ((7,), None),
    ((8,), 0),
    ((600, 1012), 1),
    ((600, 1011), -1),
    ((54, 45, 121), 2),
    ((54, 45, 120), 0),
    ((3, 4, 5), None),
    ((), None),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int16, np.uint16])
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_same_values_dtype_and_shape_as_numpy(shape, axis, dtype, keepdims):
    rng = np.random.default_rng(abs(hash((shape, axis))) % 2**32)
    x = (rng.normal(size=shape) * 300 + 1000).astype(dtype)
    want = np.median(x, axis=axis, keepdims=keepdims)
    got = median(x, axis=axis, keepdims=keepdims)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert np.shape(got) == np.shape(want)
    assert np.array_equal(got, want)


def test_ties_and_constant_data():
    x = np.array([[5.0, 5.0, 1.0, 5.0], [2.0, 2.0, 2.0, 2.0]], np.float32)
    assert np.array_equal(median(x, axis=1), np.median(x, axis=1))


def test_empty_input_is_numpy_s_answer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(median(np.zeros(0)))
        assert median(np.zeros((3, 0)), axis=1).shape == (3,)

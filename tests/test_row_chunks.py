"""Row-chunked reductions against numpy: every chunk boundary case, static and unknown row counts."""
import numpy as np
import pytest
import tensorflow as tf

from distface.ops import row_chunks
from distface.heads.classifier import inverse_row_norms
from distface.ops.gradients import Dense


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(row_chunks, "CHUNK_ROWS", 4)


@pytest.mark.parametrize("rows", [1, 4, 5, 8, 11])
def test_row_norms_match_numpy_for_static_and_unknown_rows(rows):
    w = np.random.default_rng(rows).normal(size=(rows, 3)).astype(np.float32)
    expected = 1.0 / np.linalg.norm(w.astype(np.float64), axis=1)
    unknown = tf.function(inverse_row_norms, input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    np.testing.assert_allclose(inverse_row_norms(tf.constant(w)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(unknown(tf.constant(w)).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(), (7,), (9, 2), (10, 2, 3)])
def test_sums_match_numpy_at_every_rank(shape):
    g = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(Dense(tf.constant(g)).square_sum().numpy(), np.sum(g.astype(np.float64) ** 2), rtol=1e-6)
    bad = g.copy().reshape(-1)
    bad[::3], bad[-1] = np.nan, -np.inf  # in the first and the last chunk
    expected = np.sum(~np.isfinite(bad))
    assert Dense(tf.constant(bad.reshape(shape))).non_finite_count().numpy() == expected > 0

"""A step's gradient of one variable behind one protocol, whatever form it takes:

- `Dense`: a tensor of the variable's shape (the backbone, a replicated head);
- `SparseRows`: some rows of it (Partial FC's sampled block rows, from tf.IndexedSlices), each row once;
- `RowGradient` (ops/row_gradient.py): a full sharded block's gradient kept as its factors, computed a range of
  rows at a time, never materialised.

Each has `scaled(factor)`, `square_sum()`, `non_finite_count()`, `plus(other)` (micro-batch accumulation) and
`apply(var, slots, update)`: the optimizer's rule (distface/training/rules.py) applied to the rows it covers,
written in place where the variable can be large. The trainer and the optimizer see only this protocol; `of`, which
wraps what the tape returns, is the one place that looks at a gradient's type.
"""
from __future__ import annotations

import tensorflow as tf

from distface.ops.row_chunks import CHUNK_ROWS, chunked_sum
from distface.ops.row_gradient import RowGradient
from distface.ops.updates import Update, apply_dense, apply_to_rows


def of(grad):
    """The protocol's form of a tape gradient (None stays None)."""
    if grad is None or isinstance(grad, (Dense, SparseRows, RowGradient)):
        return grad
    if isinstance(grad, tf.IndexedSlices):
        return SparseRows.combined(grad.indices, grad.values, grad.dense_shape)
    return Dense(grad)


class Dense:
    def __init__(self, value):
        self.value = value

    @property
    def tensor(self):
        return self.value

    def scaled(self, factor) -> Dense:
        return Dense(tf.cast(self.value, tf.float32) * factor)

    def square_sum(self) -> tf.Tensor:
        return chunked_sum(tf.square, self.value)  # a slice of rows at a time: a block-sized square would peak

    def non_finite_count(self) -> tf.Tensor:
        return chunked_sum(_non_finite, self.value)

    def plus(self, other: Dense) -> Dense:
        return Dense(self.value + other.value)

    def apply(self, var, slots, update: Update) -> tf.Tensor:
        return apply_dense(var, slots, self.value, update)


class SparseRows:
    """Rows `indices` (unique) of a gradient of shape dense_shape."""

    def __init__(self, indices, values, dense_shape):
        self.indices, self.values, self.dense_shape = indices, values, dense_shape

    @classmethod
    def combined(cls, indices, values, dense_shape) -> SparseRows:
        """Each row once, increasing (a repeated row's parts summed). Rows already strictly increasing (Partial FC's
        sorted sample, one gather) pass as they are: summing them again would copy every sampled row's gradient."""
        def combine():
            rows, position = tf.unique(indices)
            summed = tf.math.unsorted_segment_sum(values, position, tf.shape(rows)[0])
            order = tf.argsort(rows)
            return tf.gather(summed, order), tf.gather(rows, order)

        increasing = tf.reduce_all(indices[1:] > indices[:-1])
        values, indices = tf.cond(increasing, lambda: (values, indices), combine)
        return cls(indices, values, dense_shape)

    @property
    def tensor(self):
        return tf.IndexedSlices(self.values, self.indices, self.dense_shape)

    def scaled(self, factor) -> SparseRows:
        return SparseRows(self.indices, tf.cast(self.values, tf.float32) * factor, self.dense_shape)

    def square_sum(self) -> tf.Tensor:
        return chunked_sum(tf.square, self.values)

    def non_finite_count(self) -> tf.Tensor:
        return chunked_sum(_non_finite, self.values)

    def plus(self, other: SparseRows) -> SparseRows:
        return SparseRows.combined(tf.concat([self.indices, other.indices], 0),
                                   tf.concat([self.values, other.values], 0), self.dense_shape)

    def apply(self, var, slots, update: Update) -> tf.Tensor:
        """The rule on the sampled rows (gathered, updated, scattered back); unless lazy, then on every other row
        with g = 0, CHUNK_ROWS rows at a time. Through gather and scatter: once rows of a variable were scattered
        TensorFlow keeps it in copy-on-read mode, where one whole read copies it."""
        apply_to_rows(var, slots, self.indices, tf.cast(self.values, var.dtype), update)
        if update.lazy:
            return tf.constant(0.0)
        rows = var.shape[0]
        sampled = tf.scatter_nd(self.indices[:, tf.newaxis], tf.ones_like(self.indices, tf.float32), [rows])

        def chunk(i):
            chunk_rows = tf.range(i * CHUNK_ROWS, tf.minimum((i + 1) * CHUNK_ROWS, rows))
            keep = tf.gather(sampled, chunk_rows)[:, tf.newaxis] > 0.0
            apply_to_rows(var, slots, chunk_rows, None, update, keep)
            return i + 1

        tf.while_loop(lambda i: i < -(-rows // CHUNK_ROWS), chunk, [tf.constant(0)])
        return tf.constant(0.0)


def _non_finite(part):
    return tf.cast(~tf.math.is_finite(part), tf.float32)

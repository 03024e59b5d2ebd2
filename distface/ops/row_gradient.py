"""A head block's weight gradient kept as the factors it is made of, computed a range of rows at a time.

The sharded head's block holds millions of rows; its dense gradient would be one more block in memory, the largest
temporary of the step. Its rows are cheap to recompute from what the forward and the tape already hold, so the
trainer takes the gradient at the block's scores instead (`RowFactors.scores`, a tape source) and the optimizer
applies it range by range (distface/ops/rows_in_place.py). With g = dL/dscores [B, C] and the block's read W:
- margin heads (scores = cos(x_i, w_j), classifier.cosine_to_rows): dW = S^T x - along ⊙ W, S = g / |w|,
  along_j = Σ_i g_ij cos_ij / |w_j|^2;
- plain softmax (scores = x w_j^T): dW = g^T x.
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from distface.ops import rows_in_place
from distface.ops.row_chunks import CHUNK_ROWS, chunked_sum
from distface.ops.updates import Update, apply_dense, apply_streamed

# The non-finite guard proves a gradient finite from bounds of its factors below this (a 4x margin for rounding).
_FINITE_BOUND = float(tf.float32.max) / 4


# XLA writes the projection term into the matmul's output (measured: one block less than TensorFlow's two ops).
@tf.function(jit_compile=True)
def weight_gradient(scaled, x, along, weight):
    """S^T x - along ⊙ W: the margin heads' weight gradient (of any range of rows)."""
    return tf.matmul(scaled, x, transpose_a=True) - along[:, tf.newaxis] * weight


class RowFactors(NamedTuple):
    """What the forward keeps for a block's gradient rows."""
    scores: tf.Tensor  # [B, C] the tape source: cos(x, w) (margin heads) or x w^T (softmax), before any bias
    x: tf.Tensor  # [B, d] the embeddings multiplied (unit rows for margin heads)
    weight: tf.Tensor  # [C, d] the block's read (an alias of its buffer)
    inv_norm: tf.Tensor | None  # [C] 1 / |w_j| (margin heads)


class RowGradient:
    """factor · dW of a block, never materialised: `rows` gives any range of it."""

    def __init__(self, factors: RowFactors, scaled_scores, along, factor=None):  # factor None: 1
        # scaled_scores: dL/dscores over |w_j| (margin heads) or dL/dscores (softmax), [B, C]
        self.factors, self.scaled_scores, self.along, self.factor = factors, scaled_scores, along, factor

    @classmethod
    def from_upstream(cls, upstream, factors: RowFactors) -> RowGradient:
        """The gradient of a loss whose gradient at factors.scores is `upstream`."""
        if factors.inv_norm is None:
            return cls(factors, upstream, None)
        along = tf.reduce_sum(upstream * factors.scores, axis=0) * tf.square(factors.inv_norm)
        return cls(factors, upstream * factors.inv_norm, along)

    def scaled(self, factor) -> RowGradient:
        factor = tf.convert_to_tensor(factor, tf.float32)
        total = factor if self.factor is None else self.factor * factor
        return RowGradient(self.factors, self.scaled_scores, self.along, total)

    def plus(self, other: RowGradient) -> RowGradient:
        """The sum of two micro-batches' gradients of one block (the same weights, before the update): their
        score gradients side by side, [S1; S2]^T [x1; x2] - (along1 + along2) ⊙ W, still never materialised."""
        if self.factor is not None or other.factor is not None:
            raise ValueError("add row gradients before scaling them")
        f, g = self.factors, other.factors
        factors = RowFactors(tf.concat([f.scores, g.scores], 0), tf.concat([f.x, g.x], 0), f.weight, f.inv_norm)
        along = None if self.along is None else self.along + other.along
        return RowGradient(factors, tf.concat([self.scaled_scores, other.scaled_scores], 0), along)

    def apply(self, var, slots, update: Update) -> tf.Tensor:
        """The optimizer's rule, a range of rows at a time: each range's gradient is computed and its update
        written in place (ops/updates.apply_streamed), or, inside XLA or with in-place updates off, the dense
        gradient is applied."""
        if update.in_place and rows_in_place.available():
            return apply_streamed(var, slots, self.rows, update)
        return apply_dense(var, slots, self.whole(), update)

    def rows(self, lo, weight_rows) -> tf.Tensor:
        """Rows [lo, lo + n) of the gradient, given those rows of the block (n = len(weight_rows), static)."""
        n = weight_rows.shape[0]  # XLA slices at a dynamic offset only with a static size
        along = None if self.along is None else tf.slice(self.along, [lo], [n])
        return self._of(tf.slice(self.scaled_scores, [0, lo], [-1, n]), along, weight_rows)

    def whole(self) -> tf.Tensor:
        """The dense gradient (the custom gradient's, where the tape asks for it: replicated heads, Partial FC)."""
        return self._of(self.scaled_scores, self.along, self.factors.weight)

    def _of(self, scaled, along, weight) -> tf.Tensor:
        if along is None:
            grad = tf.matmul(scaled, self.factors.x, transpose_a=True)
        else:
            grad = weight_gradient(scaled, self.factors.x, along, weight)
        return grad if self.factor is None else grad * self.factor

    def non_finite_count(self) -> tf.Tensor:
        """0.0 when every element is finite (the guard's test), else the count of those that are not."""
        return tf.cond(self._surely_finite(), lambda: tf.constant(0.0),
                       lambda: self._sum_over_rows(lambda g: tf.cast(~tf.math.is_finite(g), tf.float32)))

    def square_sum(self) -> tf.Tensor:
        return self._sum_over_rows(tf.square)

    def _surely_finite(self) -> tf.Tensor:
        """True only if every element is finite, from the factors' sums and bounds alone (no pass over the rows).
        A sum of floats is finite only if all of them are; |dW_jk| <= B max|S| max|x| + |along_j| |w_j|."""
        factor = tf.constant(1.0) if self.factor is None else self.factor
        parts = [self.scaled_scores, self.factors.x, factor] + ([] if self.along is None else [self.along])
        finite = tf.reduce_all([tf.math.is_finite(tf.reduce_sum(p)) for p in parts])
        batch = tf.cast(tf.shape(self.scaled_scores)[0], tf.float32)
        bound = batch * _max_abs(self.scaled_scores) * _max_abs(self.factors.x)
        if self.along is not None:  # |w_j| <= 1 / inv_norm_j
            bound += tf.reduce_max(tf.abs(self.along) / self.factors.inv_norm)
        return finite & (tf.abs(factor) * bound < _FINITE_BOUND)

    def _sum_over_rows(self, fn) -> tf.Tensor:
        """Σ fn(elements) over the gradient, CHUNK_ROWS rows at a time (ranges of a static size, as `rows` needs)."""
        weight = self.factors.weight
        rows, width = weight.shape
        full = rows // CHUNK_ROWS

        def chunk(k, total):
            lo = k * CHUNK_ROWS
            part = self.rows(lo, tf.slice(weight, [lo, 0], [CHUNK_ROWS, width]))
            return k + 1, total + chunked_sum(fn, part)

        total = tf.while_loop(lambda k, _: k < full, chunk, [tf.constant(0), tf.constant(0.0)])[1]
        if full * CHUNK_ROWS < rows:
            total += chunked_sum(fn, self.rows(full * CHUNK_ROWS, weight[full * CHUNK_ROWS:]))
        return total


def _max_abs(tensor) -> tf.Tensor:
    return tf.maximum(tf.reduce_max(tensor), -tf.reduce_min(tensor))  # no |tensor| temporary

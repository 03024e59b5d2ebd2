"""The replicated (data-parallel) identity head, and the pieces every head shares.

Each replica holds the whole W [C, d] and classifies its own examples; W's gradient is reduced across replicas
like the backbone's. It is the single-device head and the baseline the sharded head (sharded.py) is measured
and tested against.
"""
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import tensorflow as tf

from distface.config import HeadConfig
from distface.heads.margins import AngleSums, label_columns, make_margin, target_angles, target_degrees
from distface.losses.cross_entropy import margin_softmax_cross_entropy
from distface.ops.row_chunks import map_row_chunks
from distface.ops.row_gradient import RowFactors, RowGradient
from distface.parallel.single import SingleCollectives


def margin_from_config(cfg: HeadConfig):
    return make_margin(
        cfg.type, scale=cfg.scale, m1=cfg.m1, m2=cfg.m2, m3=cfg.m3, easy_margin=cfg.easy_margin,
        sphere_m=cfg.sphere_m, lambda_base=cfg.lambda_base, lambda_gamma=cfg.lambda_gamma,
        lambda_power=cfg.lambda_power, lambda_min=cfg.lambda_min, warmup_start=cfg.margin_warmup_start,
        warmup_steps=cfg.margin_warmup_steps, margin_gradient=cfg.margin_gradient)


def initial_weight(rows: int, embedding_size: int, seed) -> tf.Tensor:
    return tf.random.stateless_normal([rows, embedding_size], seed=seed, stddev=0.01)


def block_scores(kind: str, weight, bias, embeddings) -> tuple[tf.Tensor, RowFactors]:
    """[B, C_block] float32: cos(x, w_j) for margin heads, x.w_j + b_j for plain softmax; and the factors of the
    block's weight gradient (ops/row_gradient.py)."""
    x = tf.cast(embeddings, tf.float32)
    weight = tf.convert_to_tensor(weight)  # a variable's read: no copy
    if kind == "softmax":
        products = rows_times(x, weight)
        return products + bias, RowFactors(products, x, weight, None)
    x = tf.math.l2_normalize(x, axis=1)
    inv_norm = inverse_row_norms(weight)
    cosine = cosine_to_rows(x, weight, inv_norm)
    return cosine, RowFactors(cosine, x, weight, inv_norm)


def rows_times(x, weight):
    """x [B, d] times the rows of weight [C, d]: [B, C]. Computed as (W x^T)^T: TensorFlow's CPU matmul with
    transpose_b=True copies the whole transposed block first (measured: one block more, and 2.5x slower at
    500 k x 512); this form pays one [B, C] transpose instead."""
    return tf.transpose(tf.matmul(weight, x, transpose_b=True))


def inverse_row_norms(weight):
    """1 / |w_j| for every row, without a squared copy of the block (it would be the forward pass's peak)."""
    return tf.math.rsqrt(tf.maximum(map_row_chunks(lambda rows: tf.reduce_sum(tf.square(rows), axis=1), weight),
                                    1e-12))


@tf.custom_gradient
def cosine_to_rows(x, weight, inv_norm):
    """x [B, d] (unit rows) against the rows of weight [C, d]: (x w_j) / |w_j|, [B, C], clipped to [-1, 1];
    inv_norm = inverse_row_norms(weight), which carries no gradient of its own: the weight's below is the whole.

    The scores are divided by the row norms instead of normalising W: a block holds millions of rows, and neither
    the forward pass nor the gradient makes a normalised copy of it. With g = dL/dcos:
    dx = (g / |w|) W;  dw_j = (Σ_i g_ij x_i - (Σ_i g_ij cos_ij / |w_j|) w_j) / |w_j|.
    The clip only removes rounding past ±1 (acos' domain); the gradient is the cosine's.
    """
    cosine = tf.clip_by_value(rows_times(x, weight) * inv_norm, -1.0, 1.0)

    def grad(upstream):
        dw = RowGradient.from_upstream(upstream, RowFactors(cosine, x, weight, inv_norm))
        return tf.matmul(dw.scaled_scores, weight), dw.whole(), None

    return cosine, grad


class HeadOutput(NamedTuple):
    loss: tf.Tensor  # [b] per-example loss of this replica's examples
    angles: tuple  # margins.AngleSums over the head's columns (summed across replicas by the loop)
    target_degrees: tf.Tensor  # [b] the examples' target angles θ_y in degrees (for a histogram)
    # {name: RowFactors}: sharded blocks whose gradient the trainer takes at their scores (ops/row_gradient.py)
    row_factors: Mapping = MappingProxyType({})


ANGLE_COLUMNS = 1024  # columns of a block whose non-target angles are averaged for monitoring


def angle_sums(scores, columns, target_degrees_, valid=None) -> AngleSums:
    """Sums and counts for the mean target and non-target angles (margins.AngleSums) of a block's scores.

    Targets come from every row's own degrees; non-target angles from every k-th column only (at most
    ANGLE_COLUMNS): an acos over a block of millions of columns would cost a sixth of the step, for a statistic."""
    stride = max(1, scores.shape[1] // ANGLE_COLUMNS) if scores.shape[1] else 1
    sample = scores[:, ::stride]
    if valid is not None:
        sample = tf.where(valid[::stride], sample, math.nan)
    sample_columns = tf.where((columns >= 0) & (columns % stride == 0), columns // stride, -1)
    others = target_angles(sample, sample_columns)
    return AngleSums(tf.reduce_sum(target_degrees_), tf.reduce_sum(tf.cast(columns >= 0, tf.float32)),
                     others.other_sum, others.other_count)


def feature_norms(embeddings) -> tf.Tensor:
    return tf.norm(tf.cast(embeddings, tf.float32), axis=1)


class ReplicatedHead(tf.Module):
    """Every head exposes its variables by name: `replicated` (one value on every replica, gradients reduced)
    and `sharded` (a block per replica, local gradients); the loop, optimizer and checkpoints read only these."""

    block_size = None  # nothing is split by class

    def __init__(self, cfg: HeadConfig, runtime, num_classes: int, embedding_size: int, seed: int = 0):
        super().__init__(name="head")
        self.kind = cfg.type
        self.margin_fn = margin_from_config(cfg)
        self.num_classes = num_classes
        self.replicated = {"weight": runtime.replicated_variable(
            initial_weight(num_classes, embedding_size, [seed, 0]), name="weight", trainable=True)}
        if self.kind == "softmax":
            self.replicated["bias"] = runtime.replicated_variable(tf.zeros([num_classes]), name="bias", trainable=True)
        self.sharded = {}

    @property
    def weight(self):
        return self.replicated["weight"]

    def __call__(self, collectives, embeddings, labels, step, label_smoothing: float = 0.0) -> HeadOutput:
        labels = label_columns(labels)
        scores, _ = block_scores(self.kind, self.weight, self.replicated.get("bias"), embeddings)
        parts = self.margin_fn.parts(feature_norms(embeddings), step)
        # Each replica classifies its own examples over all C: the loss needs no collective.
        loss = margin_softmax_cross_entropy(SingleCollectives(), scores, labels, parts, self.num_classes,
                                            label_smoothing=label_smoothing)
        degrees = target_degrees(scores, labels)
        return HeadOutput(loss, angle_sums(scores, labels, degrees), degrees)

"""Softmax cross-entropy on logits, per example.

Per-example vectors, never a batch mean: the training loop divides by the global batch size.
"""

import tensorflow as tf


def softmax_cross_entropy(
    logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0
) -> tf.Tensor:
    """Cross-entropy of softmax(logits) [B, C] against integer labels [B]; returns [B] float32.

    With label smoothing ε the target is (1 − ε)·onehot(label) + ε/C, so the loss is
    (1 − ε)·(−log p_label) + ε·mean_c(−log p_c). Computed via logsumexp, so logits of any
    magnitude are safe.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    logits = tf.cast(logits, tf.float32)
    log_probs = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)
    nll = -tf.gather(log_probs, tf.cast(labels, tf.int32), batch_dims=1)
    if label_smoothing == 0.0:
        return nll
    uniform = -tf.reduce_mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def sharded_softmax_cross_entropy(collectives, logits: tf.Tensor, labels: tf.Tensor, num_classes: int,
                                  label_smoothing: float = 0.0) -> tf.Tensor:
    """The same loss when the classes are split over replicas: `logits` [B, C_block] are this replica's
    columns for the whole (gathered) batch, `labels` [B] index into them (−1: the target is in another block),
    padding columns are −inf. The normaliser comes from a cross-replica max and sum; returns [B] on every
    replica. Gradients follow the collectives' convention (an all_reduce_sum hands back the summed gradient)."""
    logits = tf.cast(logits, tf.float32)
    shift = collectives.all_reduce_max(tf.reduce_max(logits, axis=1))
    shifted = logits - shift[:, tf.newaxis]
    log_norm = tf.math.log(collectives.all_reduce_sum(tf.reduce_sum(tf.exp(shifted), axis=1)))
    # The target logit of each row, from the one block that holds it (a gather: no [B, C] mask).
    own = tf.gather(shifted, tf.maximum(labels, 0), batch_dims=1)
    target = collectives.all_reduce_sum(tf.where(labels >= 0, own, 0.0))
    nll = log_norm - target
    if label_smoothing == 0.0:
        return nll
    finite = tf.where(tf.math.is_finite(shifted), shifted, 0.0)
    mean_logit = collectives.all_reduce_sum(tf.reduce_sum(finite, axis=1)) / num_classes
    return (1.0 - label_smoothing) * nll + label_smoothing * (log_norm - mean_logit)

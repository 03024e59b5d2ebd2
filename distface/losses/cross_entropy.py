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

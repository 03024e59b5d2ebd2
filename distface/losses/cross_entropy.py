"""Softmax cross-entropy of margin logits, fused: the [B, C] logits are never kept, in forward or backward.

Per-example vectors, never a batch mean: the training loop divides by the global batch size.
"""
import math

import tensorflow as tf

from distface.heads.margins import label_columns, target_index


def margin_softmax_cross_entropy(collectives, cosine: tf.Tensor, labels: tf.Tensor, parts, num_classes: int,
                                 valid: tf.Tensor | None = None, label_smoothing: float = 0.0) -> tf.Tensor:
    """Cross-entropy [B] of softmax(logits) against labels, logits = `parts` (margins.MarginParts) on `cosine`.

    `cosine` [B, C_block] are this replica's columns for the whole (gathered) batch, `labels` [B] index into them
    (−1: the target is in another block), `valid` [C_block] marks real columns (False: padding, left out of the
    softmax); with one block (collectives of one replica) this is the plain loss. With label smoothing ε the
    target is (1 − ε)·onehot + ε/C: loss = (1 − ε)·nll + ε·mean_c(−log p_c). The normaliser comes from a
    cross-replica max and sum; the result is the same on every replica.

    Fused because a block has millions of columns: autodiff of the composition would keep the logits, their
    shifted copy, exp and the softmax gradient's intermediates, each [B, C_block]. Here the forward keeps only
    `cosine` and [B] statistics, and the backward recomputes the logits once and turns them into the gradient in
    place: dL/dz = U·(softmax − (1 − ε)·onehot − ε/C), U the upstream gradient summed over replicas (the
    adjoint of the all-reduces the loss is made of), then dz/dcos = scale off the target and the target formula's
    own derivative at it (autodiff on [B] values).
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    eps = float(label_smoothing)
    labels = label_columns(labels)
    has_target = labels >= 0
    index = target_index(labels)
    scale = tf.cast(parts.scale, tf.float32) if parts.per_row else parts.scale
    valid_f = None if valid is None else tf.cast(valid, tf.float32)

    def logits_of(c, row_scale):
        """The logits (padding columns not yet masked) and the target logits [B]."""
        target = parts.target(tf.gather_nd(c, index), row_scale)
        z = (row_scale[:, tf.newaxis] if parts.per_row else row_scale) * c
        return tf.tensor_scatter_nd_update(z, index, tf.where(has_target, target, tf.gather_nd(z, index))), target

    def masked(z):
        return z if valid is None else tf.where(valid, z, -math.inf)

    def forward(c, *per_row):
        row_scale = per_row[0] if per_row else scale
        z, target = logits_of(c, row_scale)
        # Σ_c z over the real columns, for the smoothing term (a matvec: no masked copy of z).
        z_sum = (tf.reduce_sum(z, axis=1) if valid is None else tf.linalg.matvec(z, valid_f)) if eps else None
        z = masked(z)
        shift = collectives.all_reduce_max(tf.reduce_max(z, axis=1))
        log_norm = tf.math.log(collectives.all_reduce_sum(tf.reduce_sum(tf.exp(z - shift[:, tf.newaxis]), axis=1)))
        nll = log_norm - collectives.all_reduce_sum(tf.where(has_target, target - shift, 0.0))
        loss = nll
        if eps:
            mean_logit = collectives.all_reduce_sum(z_sum) / num_classes - shift
            loss = (1.0 - eps) * nll + eps * (log_norm - mean_logit)

        def backward(upstream):
            u = collectives.all_reduce_sum(tf.convert_to_tensor(upstream))  # [B]: a gather's may be sparse
            z, _ = logits_of(c, row_scale)
            g = tf.exp(masked(z) - (shift + log_norm)[:, tf.newaxis])  # the softmax; padding columns 0
            if eps:
                g -= eps / num_classes if valid is None else (eps / num_classes) * valid_f
            g *= u[:, tf.newaxis]  # dL/dz
            g_at = tf.where(has_target, tf.gather_nd(g, index), 0.0)  # g's value at the target entries
            g_target = tf.where(has_target, g_at - (1.0 - eps) * u, 0.0)
            target_c = tf.gather_nd(c, index)
            with tf.GradientTape() as tape:  # the target formula's derivatives, on [B] values
                tape.watch(target_c)
                if per_row:
                    tape.watch(row_scale)
                target = parts.target(target_c, row_scale)
            d_target = tape.gradient(target, [target_c, *per_row], output_gradients=g_target,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)
            if per_row:  # Σ_j≠y dL/dz_ij · c_ij, and the target's own dependence on the row scale
                d_row = tf.reduce_sum(g * c, axis=1) - g_at * target_c + d_target[1]
            d_cosine = g * (row_scale[:, tf.newaxis] if per_row else row_scale)
            d_cosine = tf.tensor_scatter_nd_update(d_cosine, index,
                                                   tf.where(has_target, d_target[0], tf.gather_nd(d_cosine, index)))
            return (d_cosine, d_row) if per_row else d_cosine

        return loss, backward

    cosine = tf.cast(cosine, tf.float32)
    fused = tf.custom_gradient(forward)
    return fused(cosine, scale) if parts.per_row else fused(cosine)

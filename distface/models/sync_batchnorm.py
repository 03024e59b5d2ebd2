"""Synchronized BatchNorm (model.sync_batchnorm): batch mean and variance over the global batch, through the engine's
collectives, so every replica normalises with the same statistics and keeps the same moving averages.

Why our own layer: Keras 3's `BatchNormalization(synchronized=True)` all-reduces through the tf.distribute replica
context, which Horovod does not have (there it silently keeps per-replica statistics), and Horovod's
`SyncBatchNormalization` is written against Keras 2 (`fused=`, `_moments(inputs, axes, keep_dims)`; Keras 3
rejects both) and averages per-rank means, which is wrong for unequal local batches. This layer replaces only the
batch statistics (Keras 3's private `_moments`, opened in ops/keras_layers.py): one all-reduce SUM of
[Σx, Σx², count] in float32 (also under mixed precision: Keras casts BatchNorm's inputs to float32 first), then
mean = Σx / n, var = Σx² / n − mean². Everything else (γ, β, moving averages, inference) is Keras' own.

Gradients: under engine.py's convention (each replica's partial loss, gradients summed), `all_reduce_sum`
differentiates to the all-reduce SUM of the upstream gradients, so each replica's input gradient includes every
replica's dependence on the shared statistics: the gradient of the single-device batch over the concatenated batch.

Backbones know nothing of this: `synchronize_batchnorm` (called by `build_backbone`) swaps the layer into a copy of
the built model. Checkpoints keep Keras' variable names, so a plain backbone (eval, export) restores them.
"""
import keras
import tensorflow as tf

from distface.ops.keras_layers import BatchNormalizationWithStatistics


class SyncBatchNormalization(BatchNormalizationWithStatistics):
    """keras.layers.BatchNormalization with its training statistics summed over `collectives` (engine.py)."""

    def __init__(self, collectives, **kwargs):
        super().__init__(**kwargs)
        self.collectives = collectives

    def batch_statistics(self, inputs, axes):
        x = tf.cast(inputs, tf.float32)
        channels = x.shape[self.axis]
        count = tf.cast(tf.size(x) // channels, tf.float32)
        local = tf.concat([tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes), count[tf.newaxis]], axis=0)
        # Distribution: the statistics of the global batch (one collective for all three sums).
        total, total_squares, n = tf.split(self.collectives.all_reduce_sum(local), [channels, channels, 1])
        mean = total / n
        return mean, tf.maximum(total_squares / n - tf.square(mean), 0.0)


def synchronize_batchnorm(model: keras.Model, collectives) -> keras.Model:
    """A copy of `model` (same layers, names and weights) whose BatchNormalization layers are synchronized over
    `collectives`. Build it in the runtime's scope, like the model."""
    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return SyncBatchNormalization(collectives, **layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    synced = keras.models.clone_model(model, clone_function=clone, recursive=True)
    synced.set_weights(model.get_weights())
    return synced

"""Keras 3 layers opened at their private seams."""
import keras


class BatchNormalizationWithStatistics(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training-time batch mean and variance come from
    `batch_statistics(inputs, axes)`: Keras 3 computes them in its private `_moments(inputs, mask)` over
    `self._reduction_axes` and does everything else (scale, offset, moving averages, inference) around it."""

    def batch_statistics(self, inputs, axes):
        raise NotImplementedError

    def _moments(self, inputs, mask):
        if mask is not None:
            raise ValueError(f"{self.name}: {type(self).__name__} does not take a mask")
        return self.batch_statistics(inputs, self._reduction_axes)

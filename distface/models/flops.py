"""Model size by the papers' conventions, computed from the Keras layers (no profiler, no forward pass).

Parameters: trainable weights (BatchNorm moving statistics are state, not parameters, as PyTorch counts).
MACs: multiply-accumulates per image of the convolutions and dense layers (1 MAC = 2 FLOPs); biases, BN,
activations, pooling, LRN and additions are left out. This is what MobileFaceNet's "MAdds", FaceNet's
Table 1 "FLPS" and insightface's "GFLOPs" count.
"""
import math

import tensorflow as tf

layers = tf.keras.layers
# Layers whose cost is linear in the activations (or nil): negligible next to the convs and so not counted.
UNCOUNTED_WITH_WEIGHTS = (layers.BatchNormalization, layers.PReLU)


def count_parameters(model: tf.keras.Model) -> int:
    """Number of trainable scalars."""
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def count_macs(model: tf.keras.Model) -> int:
    """Multiply-accumulates per image: kernel size times output positions for every conv and dense layer."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
            # Conv2D kernels are [kh, kw, cin/groups, cout], depthwise [kh, kw, cin, multiplier], dense
            # [din, dout]: each kernel element is one MAC at each output position (all axes but batch, channels).
            positions = math.prod(layer.output.shape[1:-1])
            total += math.prod(layer.kernel.shape) * positions
        elif layer.weights and not isinstance(layer, UNCOUNTED_WITH_WEIGHTS):
            raise ValueError(f"count_macs: layer {layer.name!r} ({type(layer).__name__}) has weights but no "
                             "MAC rule; add one")
    return total

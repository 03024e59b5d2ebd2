"""MobileFaceNet (Chen et al. 2018, "MobileFaceNets", Table 1): 0.99 M parameters and 221 M MAdds at 112x112.

MobileNetV2 bottlenecks (expand 1x1 → depthwise 3x3 → linear project 1x1, residual when the shape is kept) with
PReLU, and a global depthwise conv (GDC) in place of global average pooling: a face's centre and corners matter
differently, so each position gets its own learnt weight. The GDC kernel is the final map's size (7x7 at 112x112).
"""
import tensorflow as tf

layers = tf.keras.layers
# (expansion t, output channels c, repeats n, first stride s), the paper's Table 1.
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _bn(x, name, act=True):
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if not act:
        return x
    return layers.PReLU(shared_axes=[1, 2], alpha_initializer=tf.keras.initializers.Constant(0.25),
                        name=f"{name}_prelu")(x)


def _conv(x, filters, kernel, stride, name, act=True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return _bn(x, name, act)


def _depthwise(x, kernel, stride, name, padding="same", act=True):
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=f"{name}_dwconv")(x)
    return _bn(x, name, act)


def _bottleneck(x, expansion, filters, stride, name):
    shortcut = x
    y = _conv(x, x.shape[-1] * expansion, 1, 1, f"{name}_expand")
    y = _depthwise(y, 3, stride, f"{name}_dw")
    y = _conv(y, filters, 1, 1, f"{name}_project", act=False)
    if stride == 1 and shortcut.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([shortcut, y])
    return y


def mobilefacenet(image_size, embedding_size: int = 128, dropout: float = 0.0) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = _conv(inputs, 64, 3, 2, "conv1")
    x = _depthwise(x, 3, 1, "conv2")
    for group, (expansion, filters, repeats, stride) in enumerate(BOTTLENECKS, start=1):
        for unit in range(1, repeats + 1):
            x = _bottleneck(x, expansion, filters, stride if unit == 1 else 1, f"bottleneck{group}_{unit}")
    x = _conv(x, 512, 1, 1, "conv3")
    x = _depthwise(x, tuple(x.shape[1:3]), 1, "gdc", padding="valid", act=False)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Conv2D(embedding_size, 1, use_bias=False, name="linear_conv")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.BatchNormalization(name="embedding_bn")(x)
    return tf.keras.Model(inputs, x, name="mobilefacenet")

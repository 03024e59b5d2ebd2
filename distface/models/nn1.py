"""FaceNet's NN1 (Schroff et al. 2015, Table 1): the Zeiler&Fergus-style net with 1x1 "a" convs, 220x220 input.

ReLU after every conv, max pools 3x3/2, local response normalisation ("rnorm") after pool1 and conv2, then
two maxout FCs (p=2, 1x32x128 = 4096 units each) and a linear FC to the embedding. The table's "concat" row
maps 7x7x256 to itself and is left out. The paper's final L2 normalisation is left to the heads.
"""
import tensorflow as tf

layers = tf.keras.layers


class LocalResponseNorm(layers.Layer):
    """Cross-channel LRN, x / (bias + alpha·Σ x²)^beta over 2·depth_radius+1 channels; AlexNet's constants."""

    def __init__(self, depth_radius: int = 2, bias: float = 2.0, alpha: float = 1e-4, beta: float = 0.75,
                 **kwargs):
        super().__init__(**kwargs)
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def call(self, x):
        # In float32: squares overflow float16 past 256, and TF has no bfloat16 LRN kernel on CPU.
        y = tf.nn.local_response_normalization(tf.cast(x, tf.float32), self.depth_radius, self.bias, self.alpha,
                                               self.beta)
        return tf.cast(y, x.dtype)

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias, "alpha": self.alpha,
                "beta": self.beta}


class Maxout(layers.Layer):
    """Maxout (Goodfellow et al. 2013): the max over each group of `pieces` adjacent units of a [B, n] input."""

    def __init__(self, pieces: int, **kwargs):
        super().__init__(**kwargs)
        self.pieces = pieces

    def call(self, x):
        return tf.reduce_max(tf.reshape(x, [-1, x.shape[-1] // self.pieces, self.pieces]), axis=-1)

    def get_config(self):
        return {**super().get_config(), "pieces": self.pieces}


def _conv(x, filters, kernel, stride, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", activation="relu", name=name)(x)


def _pool(x, name):
    return layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)


def _maxout_fc(x, units, name):
    x = layers.Dense(2 * units, name=name)(x)
    return Maxout(2, name=f"{name}_maxout")(x)


def nn1(image_size, embedding_size: int = 128, dropout: float = 0.0) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = _conv(inputs, 64, 7, 2, "conv1")
    x = _pool(x, "pool1")
    x = LocalResponseNorm(name="rnorm1")(x)
    x = _conv(x, 64, 1, 1, "conv2a")
    x = _conv(x, 192, 3, 1, "conv2")
    x = LocalResponseNorm(name="rnorm2")(x)
    x = _pool(x, "pool2")
    x = _conv(x, 192, 1, 1, "conv3a")
    x = _conv(x, 384, 3, 1, "conv3")
    x = _pool(x, "pool3")
    for i, filters in ((4, 384), (5, 256), (6, 256)):
        x = _conv(x, filters, 1, 1, f"conv{i}a")
        x = _conv(x, 256, 3, 1, f"conv{i}")
    x = _pool(x, "pool4")
    x = layers.Flatten(name="flatten")(x)
    x = _maxout_fc(x, 32 * 128, "fc1")
    x = _maxout_fc(x, 32 * 128, "fc2")
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="fc7")(x)
    return tf.keras.Model(inputs, x, name="nn1")

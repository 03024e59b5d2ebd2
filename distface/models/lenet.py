"""LeNets++ (Wen et al. 2016, "A Discriminative Feature Learning Approach", Fig. 2): the MNIST net of the
center-loss paper, whose 2-D features make the class clusters visible in a plot.

Three stages of two 5x5 convs (32, 64, 128 filters, padding 2) with PReLU, each followed by a 2x2/2 max pool,
then an FC to the feature and a PReLU on it, as the authors' caffe-face MNIST example ("ip1" + "preluip1").
Pools round up as Caffe's do (28 → 14 → 7 → 4); PyTorch ports that round down read a 3x3 map instead.
"""
import tensorflow as tf

layers = tf.keras.layers


def _prelu(x, name):
    # Per-channel slopes starting at 0.25, Caffe's PReLU default.
    return layers.PReLU(shared_axes=[1, 2] if len(x.shape) == 4 else None,
                        alpha_initializer=tf.keras.initializers.Constant(0.25), name=name)(x)


def lenetpp(image_size, embedding_size: int = 2, dropout: float = 0.0) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = inputs
    for stage, filters in enumerate((32, 64, 128), start=1):
        for i in (1, 2):
            x = layers.Conv2D(filters, 5, padding="same", name=f"conv{stage}_{i}")(x)
            x = _prelu(x, f"prelu{stage}_{i}")
        x = layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, name="ip1")(x)
    return tf.keras.Model(inputs, _prelu(x, "prelu_ip1"), name="lenetpp")

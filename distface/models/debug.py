"""A small CNN for debugging and CPU demos: four strided conv stages, BN + PReLU, FC embedding."""
import tensorflow as tf

layers = tf.keras.layers


def _conv_bn_prelu(x, filters, stride, name):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.PReLU(shared_axes=[1, 2], name=f"{name}_prelu")(x)


def debug_cnn(image_size, embedding_size: int, dropout: float = 0.0) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = inputs
    for i, (filters, stride) in enumerate([(32, 2), (64, 2), (128, 2), (128, 1)]):
        x = _conv_bn_prelu(x, filters, stride, f"stage{i + 1}")
    x = layers.Flatten()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(embedding_size, name="fc")(x)
    # BN on the embedding (as in ArcFace's output block) keeps the features centred for cosine heads.
    x = layers.BatchNormalization(name="embedding_bn")(x)
    return tf.keras.Model(inputs, x, name="debug")

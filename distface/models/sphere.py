"""SphereFace residual nets (Liu et al. 2017, "SphereFace", Table 2): sphere20 and sphere64.

Four stages of 64/128/256/512 channels; each opens with a stride-2 3x3 conv and continues with residual units of
two 3x3 convs; PReLU after every conv; flatten + FC to the embedding. Input 112x96 in the paper, any size works.
"""
import tensorflow as tf

layers = tf.keras.layers
CHANNELS = (64, 128, 256, 512)


def _conv_prelu(x, filters, stride, name):
    # The paper initialises the stage convs with Xavier and the residual ones with N(0, 0.01) and zero bias.
    init = "glorot_uniform" if stride == 2 else tf.keras.initializers.RandomNormal(stddev=0.01)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", kernel_initializer=init, name=f"{name}_conv")(x)
    return layers.PReLU(shared_axes=[1, 2], alpha_initializer=tf.keras.initializers.Constant(0.25),
                        name=f"{name}_prelu")(x)


def _sphere(units, image_size, embedding_size, dropout, name):
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = inputs
    for stage, (filters, count) in enumerate(zip(CHANNELS, units), start=1):
        x = _conv_prelu(x, filters, 2, f"conv{stage}_1")
        for unit in range(count):
            shortcut = x
            x = _conv_prelu(x, filters, 1, f"conv{stage}_{2 * unit + 2}")
            x = _conv_prelu(x, filters, 1, f"conv{stage}_{2 * unit + 3}")
            x = layers.Add(name=f"res{stage}_{unit + 1}")([shortcut, x])
    x = layers.Flatten()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(embedding_size, name="fc5")(x)
    return tf.keras.Model(inputs, x, name=name)


def sphere20(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    return _sphere((1, 2, 4, 1), image_size, embedding_size, dropout, "sphere20")


def sphere64(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    return _sphere((3, 8, 16, 3), image_size, embedding_size, dropout, "sphere64")

"""Inception-ResNet-v1 (Szegedy et al. 2016) as FaceNet's reimplementation trains it (davidsandberg/facenet,
`src/models/inception_resnet_v1.py`): 160x160 input there; any size from 75x75 up works.

Stem → 5 x block35 (residual scale 0.17) → reduction-A → 10 x block17 (0.10) → reduction-B → 5 x block8 (0.20)
→ a last block8 with scale 1 and no ReLU → global average pool → dropout → bottleneck FC (no bias) + BN.
Every conv except the residual "up" projections is conv (no bias) + BN + ReLU; the BN has no learnt scale,
as slim's batch_norm default, with facenet's decay 0.995 and epsilon 1e-3. Scaling the residual branch down
keeps the sum's variance in check this deep (the paper's fix for instabilities past ~1000 filters).
"""
import tensorflow as tf

from distface.config import InputError

layers = tf.keras.layers
MIN_SIZE = 75  # the smallest input that leaves reduction-B a non-empty map
# facenet initialises every conv and the bottleneck with a truncated normal of stddev 0.1.
INIT = tf.keras.initializers.TruncatedNormal(stddev=0.1)


def _conv(x, filters, kernel, name, stride=1, padding="same"):
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, kernel_initializer=INIT,
                      name=name)(x)
    x = layers.BatchNormalization(momentum=0.995, epsilon=1e-3, scale=False, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual(x, branches, scale, name, activation=True):
    """x + scale · conv1x1(concat(branches)), then ReLU; the 1x1 'up' projection is linear with a bias."""
    mixed = layers.Concatenate(name=f"{name}_concat")(branches)
    up = layers.Conv2D(x.shape[-1], 1, kernel_initializer=INIT, name=f"{name}_up")(mixed)
    up = layers.Rescaling(scale, name=f"{name}_scale")(up)
    x = layers.Add(name=f"{name}_add")([x, up])
    return layers.ReLU(name=f"{name}_relu")(x) if activation else x


def _block35(x, scale, name):
    b0 = _conv(x, 32, 1, f"{name}_b0_1x1")
    b1 = _conv(_conv(x, 32, 1, f"{name}_b1_0a_1x1"), 32, 3, f"{name}_b1_0b_3x3")
    b2 = _conv(x, 32, 1, f"{name}_b2_0a_1x1")
    b2 = _conv(_conv(b2, 32, 3, f"{name}_b2_0b_3x3"), 32, 3, f"{name}_b2_0c_3x3")
    return _residual(x, [b0, b1, b2], scale, name)


def _block17(x, scale, name):
    b0 = _conv(x, 128, 1, f"{name}_b0_1x1")
    b1 = _conv(x, 128, 1, f"{name}_b1_0a_1x1")
    b1 = _conv(_conv(b1, 128, (1, 7), f"{name}_b1_0b_1x7"), 128, (7, 1), f"{name}_b1_0c_7x1")
    return _residual(x, [b0, b1], scale, name)


def _block8(x, scale, name, activation=True):
    b0 = _conv(x, 192, 1, f"{name}_b0_1x1")
    b1 = _conv(x, 192, 1, f"{name}_b1_0a_1x1")
    b1 = _conv(_conv(b1, 192, (1, 3), f"{name}_b1_0b_1x3"), 192, (3, 1), f"{name}_b1_0c_3x1")
    return _residual(x, [b0, b1], scale, name, activation)


def _pool(x, name):
    return layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


def _reduction_a(x, name):
    b0 = _conv(x, 384, 3, f"{name}_b0_1a_3x3", stride=2, padding="valid")
    b1 = _conv(_conv(x, 192, 1, f"{name}_b1_0a_1x1"), 192, 3, f"{name}_b1_0b_3x3")
    b1 = _conv(b1, 256, 3, f"{name}_b1_1a_3x3", stride=2, padding="valid")
    return layers.Concatenate(name=f"{name}_concat")([b0, b1, _pool(x, f"{name}_b2_pool")])


def _reduction_b(x, name):
    b0 = _conv(_conv(x, 256, 1, f"{name}_b0_0a_1x1"), 384, 3, f"{name}_b0_1a_3x3", stride=2, padding="valid")
    b1 = _conv(_conv(x, 256, 1, f"{name}_b1_0a_1x1"), 256, 3, f"{name}_b1_1a_3x3", stride=2, padding="valid")
    b2 = _conv(_conv(x, 256, 1, f"{name}_b2_0a_1x1"), 256, 3, f"{name}_b2_0b_3x3")
    b2 = _conv(b2, 256, 3, f"{name}_b2_1a_3x3", stride=2, padding="valid")
    return layers.Concatenate(name=f"{name}_concat")([b0, b1, b2, _pool(x, f"{name}_b3_pool")])


def inception_resnet_v1(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    if min(image_size) < MIN_SIZE:
        raise InputError(f"inception_resnet_v1 needs images of at least {MIN_SIZE}x{MIN_SIZE}, "
                         f"got {image_size[0]}x{image_size[1]}")
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = _conv(inputs, 32, 3, "conv2d_1a_3x3", stride=2, padding="valid")
    x = _conv(x, 32, 3, "conv2d_2a_3x3", padding="valid")
    x = _conv(x, 64, 3, "conv2d_2b_3x3")
    x = _pool(x, "maxpool_3a_3x3")
    x = _conv(x, 80, 1, "conv2d_3b_1x1", padding="valid")
    x = _conv(x, 192, 3, "conv2d_4a_3x3", padding="valid")
    x = _conv(x, 256, 3, "conv2d_4b_3x3", stride=2, padding="valid")
    for i in range(1, 6):
        x = _block35(x, 0.17, f"block35_{i}")
    x = _reduction_a(x, "mixed_6a")
    for i in range(1, 11):
        x = _block17(x, 0.10, f"block17_{i}")
    x = _reduction_b(x, "mixed_7a")
    for i in range(1, 6):
        x = _block8(x, 0.20, f"block8_{i}")
    x = _block8(x, 1.0, "block8_6", activation=False)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(embedding_size, use_bias=False, kernel_initializer=INIT, name="bottleneck")(x)
    x = layers.BatchNormalization(momentum=0.995, epsilon=1e-3, scale=False, name="bottleneck_bn")(x)
    return tf.keras.Model(inputs, x, name="inception_resnet_v1")

"""IResNet, ArcFace's improved ResNet (Deng et al. 2019; insightface arcface_torch `backbones/iresnet.py`).

Stem conv3x3 64 + BN + PReLU at full resolution, then four stages of 64/128/256/512 channels. A unit is
BN → conv3x3 → BN → PReLU → conv3x3 → BN plus the shortcut, with no activation after the addition; the stride
sits in the unit's second conv, so the first conv of a down-sampling unit still sees the full-resolution map.
Every stage opens with a stride-2 unit whose shortcut is a strided conv1x1 + BN. The output block
BN → Dropout → Flatten → FC → BN keeps the spatial layout (no global pooling): at 112x112 the FC reads 7x7x512.
"""
import tensorflow as tf

layers = tf.keras.layers
CHANNELS = (64, 128, 256, 512)
# PyTorch's BatchNorm defaults (eps 1e-5, momentum 0.1 = Keras 0.9), which the published models train with.
BN = {"epsilon": 1e-5, "momentum": 0.9}


def _conv(x, filters, kernel, stride, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)


def _prelu(x, name):
    # Per-channel slopes starting at 0.25, as torch.nn.PReLU(channels).
    return layers.PReLU(shared_axes=[1, 2], alpha_initializer=tf.keras.initializers.Constant(0.25), name=name)(x)


def _unit(x, filters, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_shortcut_conv")
        shortcut = layers.BatchNormalization(**BN, name=f"{name}_shortcut_bn")(shortcut)
    x = layers.BatchNormalization(**BN, name=f"{name}_bn1")(x)
    x = _conv(x, filters, 3, 1, f"{name}_conv1")
    x = layers.BatchNormalization(**BN, name=f"{name}_bn2")(x)
    x = _prelu(x, f"{name}_prelu")
    x = _conv(x, filters, 3, stride, f"{name}_conv2")
    x = layers.BatchNormalization(**BN, name=f"{name}_bn3")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def _iresnet(units, image_size, embedding_size, dropout, name):
    inputs = tf.keras.Input(shape=(*image_size, 3), name="images")
    x = _conv(inputs, 64, 3, 1, "stem_conv")
    x = layers.BatchNormalization(**BN, name="stem_bn")(x)
    x = _prelu(x, "stem_prelu")
    for stage, (filters, count) in enumerate(zip(CHANNELS, units), start=1):
        for unit in range(1, count + 1):
            x = _unit(x, filters, 2 if unit == 1 else 1, f"stage{stage}_unit{unit}")
    x = layers.BatchNormalization(**BN, name="output_bn")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(embedding_size, name="fc")(x)
    # arcface_torch freezes this BN's scale at 1 ("features"): only the shift is learnt.
    x = layers.BatchNormalization(**BN, scale=False, name="features_bn")(x)
    return tf.keras.Model(inputs, x, name=name)


def iresnet18(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    return _iresnet((2, 2, 2, 2), image_size, embedding_size, dropout, "iresnet18")


def iresnet34(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    return _iresnet((3, 4, 6, 3), image_size, embedding_size, dropout, "iresnet34")


def iresnet50(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    return _iresnet((3, 4, 14, 3), image_size, embedding_size, dropout, "iresnet50")


def iresnet100(image_size, embedding_size: int = 512, dropout: float = 0.0) -> tf.keras.Model:
    return _iresnet((3, 13, 30, 3), image_size, embedding_size, dropout, "iresnet100")

"""Image ops of the input pipeline that TensorFlow offers only as raw ops."""
import tensorflow as tf


def projective_transform(image: tf.Tensor, params) -> tf.Tensor:
    """image [H, W, C] resampled by the 8 projective parameters (output (x, y) samples input
    ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1), bilinear, borders by the nearest
    pixel. ImageProjectiveTransformV3 is what keras' and tfa's image transforms call."""
    transform = tf.cast(tf.stack(params), tf.float32)[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")[0]

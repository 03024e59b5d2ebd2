"""Training-time photometric and geometric augmentation of face crops (data.augment), stateless and seeded.

Every random draw comes from tf.random.stateless_* ops keyed by the element's seed (the same int [2] seed that
numbers its flip in distface.data.pipeline.preprocess), folded with a distinct constant per draw: a run repeats
exactly under parallel maps and on resume, and the draws are independent of the flip's.

Policies (data.augment):
- none: nothing (the flip alone, data.flip).
- faces: for aligned or roughly centred face crops: a random scale-and-shift crop (area 0.80..1, aspect
  0.9..1.1, anywhere inside the image, resized back), a small rotation (|angle| <= 10 degrees, about the centre,
  borders filled by the nearest pixel), brightness (+-0.125 of the range) and contrast (x 0.75..1.25 about the
  image mean), clipped back to the uint8 range. Images stay float32 [h, w, C] in 0..255.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from distface.ops.image import projective_transform

POLICIES = ("none", "faces")

# faces policy parameters
CROP_AREA = (0.80, 1.0)  # fraction of the image's area the crop keeps
CROP_ASPECT = (0.9, 1.1)  # crop aspect (w/h) relative to the image's
MAX_ROTATION_DEG = 10.0
MAX_BRIGHTNESS = 0.125 * 255.0  # additive, in pixel units
CONTRAST = (0.75, 1.25)

# fold-in constants: one independent stream per draw
_CROP, _ROTATE, _BRIGHT, _CONTRAST = 11, 12, 13, 14


@dataclass(frozen=True)
class TrainingAugment:
    """What training preprocessing does: the horizontal flip (data.flip) and the policy (data.augment). Passed
    where the pipeline passes its `flip` flag (preprocess's `training`); truthy when it does anything."""
    flip: bool = True
    policy: str = "none"

    def __bool__(self) -> bool:
        return self.flip or self.policy != "none"


def training_augment(data_config) -> TrainingAugment:
    """The TrainingAugment of a DataConfig (data.flip, data.augment)."""
    return TrainingAugment(flip=bool(data_config.flip), policy=data_config.augment)


def _sub_seed(seed: tf.Tensor, k: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), k)


def augment(image: tf.Tensor, policy: str, seed: tf.Tensor) -> tf.Tensor:
    """float32 [h, w, C] (pixel values 0..255) -> the same shape and dtype, augmented by `policy`, deterministic
    in seed (int [2])."""
    if policy not in POLICIES:
        raise ValueError(f"data.augment: unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    if policy == "none":
        return image
    image = tf.convert_to_tensor(image, tf.float32)
    image = random_resized_crop(image, _sub_seed(seed, _CROP))
    image = random_rotation(image, _sub_seed(seed, _ROTATE))
    image = random_brightness_contrast(image, _sub_seed(seed, _BRIGHT), _sub_seed(seed, _CONTRAST))
    return image


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, area=CROP_AREA, aspect=CROP_ASPECT) -> tf.Tensor:
    """A crop of random area and aspect at a random place, resized (bilinear) back to the image's size."""
    shape = tf.shape(image)
    u = tf.random.stateless_uniform([4], seed, 0.0, 1.0)
    a = area[0] + (area[1] - area[0]) * u[0]
    log_r = math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * u[1]
    r = tf.exp(log_r)
    ch = tf.minimum(tf.sqrt(a / r), 1.0)  # crop height and width as fractions of the image's
    cw = tf.minimum(tf.sqrt(a * r), 1.0)
    y0, x0 = (1.0 - ch) * u[2], (1.0 - cw) * u[3]
    box = tf.stack([y0, x0, y0 + ch, x0 + cw])[None]
    return tf.image.crop_and_resize(image[None], box, [0], shape[:2], method="bilinear")[0]


def random_rotation(image: tf.Tensor, seed: tf.Tensor, max_deg: float = MAX_ROTATION_DEG) -> tf.Tensor:
    """Rotate about the centre by a uniform angle in [-max_deg, max_deg] degrees."""
    return rotate(image, tf.random.stateless_uniform([], seed, -max_deg, max_deg) * (math.pi / 180.0))


def rotate(image: tf.Tensor, angle: tf.Tensor | float) -> tf.Tensor:
    """Rotate the content counter-clockwise by `angle` radians about the centre, borders filled by the nearest
    pixel (pi/2 on a square image is np.rot90)."""
    shape = tf.shape(image)
    cy = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
    cx = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
    c, s = tf.cos(angle), tf.sin(angle)
    # output (x, y) samples input (c*x - s*y + tx, s*x + c*y + ty): a rotation about (cx, cy)
    return projective_transform(image, [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])


def random_brightness_contrast(image: tf.Tensor, bright_seed: tf.Tensor, contrast_seed: tf.Tensor,
                               max_delta: float = MAX_BRIGHTNESS, contrast=CONTRAST) -> tf.Tensor:
    """(image - mean) * factor + mean + delta, clipped to 0..255; one factor and delta per image."""
    delta = tf.random.stateless_uniform([], bright_seed, -max_delta, max_delta)
    factor = tf.random.stateless_uniform([], contrast_seed, contrast[0], contrast[1])
    return adjust(image, delta, factor)


def adjust(image: tf.Tensor, delta: tf.Tensor | float, factor: tf.Tensor | float) -> tf.Tensor:
    """The closed form of random_brightness_contrast for given delta and factor."""
    mean = tf.reduce_mean(image)
    return tf.clip_by_value((image - mean) * factor + mean + delta, 0.0, 255.0)

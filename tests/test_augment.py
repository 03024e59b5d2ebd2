"""data.augment: seeded, repeatable, shape/dtype/range preserving, off by default, and closed forms that match numpy."""
import math

import numpy as np
import pytest
import tensorflow as tf

from distface.config import ConfigError, parse_config
from distface.data.augment import TrainingAugment, adjust, augment, rotate, training_augment
from distface.data.pipeline import preprocess, train_dataset

SIZE = (32, 28)


def _image(seed=0, shape=(40, 36, 3)):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _seed(*s):
    return tf.constant(s, tf.int64)


FACES = TrainingAugment(flip=True, policy="faces")


def test_same_seed_same_image_and_seeds_differ():
    image = _image()
    a = preprocess(image, SIZE, FACES, _seed(0, 5)).numpy()
    b = preprocess(image, SIZE, FACES, _seed(0, 5)).numpy()
    np.testing.assert_array_equal(a, b)
    c = preprocess(image, SIZE, FACES, _seed(0, 6)).numpy()  # another position of the stream
    d = preprocess(image, SIZE, FACES, _seed(1, 5)).numpy()  # another run seed
    assert np.abs(a - c).mean() > 1e-3 and np.abs(a - d).mean() > 1e-3


def test_keeps_shape_dtype_and_range():
    for k in range(8):
        out = preprocess(_image(k), SIZE, FACES, _seed(3, k))
        assert out.shape == (*SIZE, 3) and out.dtype == tf.float32
        assert -0.9961 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 0.9961
    raw = augment(tf.cast(_image(), tf.float32), "faces", _seed(0, 1))
    assert raw.shape == (40, 36, 3) and raw.dtype == tf.float32


def test_off_is_the_flip_alone():
    image = _image()
    for flip in (True, False):
        plain = preprocess(image, SIZE, flip, _seed(0, 2)).numpy()
        spec = preprocess(image, SIZE, TrainingAugment(flip=flip, policy="none"), _seed(0, 2)).numpy()
        np.testing.assert_array_equal(plain, spec)
    assert not TrainingAugment(flip=False, policy="none") and TrainingAugment(flip=False, policy="faces")
    x = tf.cast(_image(), tf.float32)
    np.testing.assert_array_equal(augment(x, "none", _seed(0, 0)).numpy(), x.numpy())
    with pytest.raises(ValueError, match="unknown policy"):
        augment(x, "bogus", _seed(0, 0))


def test_rotation_and_brightness_contrast_match_numpy():
    x = np.random.default_rng(1).uniform(0, 255, (11, 11, 1)).astype(np.float32)
    np.testing.assert_allclose(rotate(tf.constant(x), math.pi / 2).numpy(), np.rot90(x), atol=1e-3)
    np.testing.assert_allclose(rotate(tf.constant(x), 0.0).numpy(), x, atol=1e-4)
    # Non-square: a quarter turn about (6, 4) maps to integer pixels, and what falls outside takes the nearest pixel.
    wide = np.random.default_rng(3).uniform(0, 255, (9, 13, 1)).astype(np.float32)
    ys, xs = np.mgrid[0:9, 0:13]
    np.testing.assert_allclose(rotate(tf.constant(wide), math.pi / 2).numpy(),
                               wide[np.clip(xs - 2, 0, 8), np.clip(10 - ys, 0, 12)], atol=1e-3)
    out = adjust(tf.constant(x), 20.0, 1.2).numpy()
    np.testing.assert_allclose(out, np.clip((x - x.mean()) * 1.2 + x.mean() + 20.0, 0, 255), rtol=1e-5, atol=1e-3)


def test_config_key_and_pipeline_repeat_exactly():
    assert parse_config(None).data.augment == "none"
    cfg = parse_config(None, ["data.augment=faces", "data.flip=false"])
    assert training_augment(cfg.data) == TrainingAugment(flip=False, policy="faces")
    with pytest.raises(ConfigError, match="data.augment"):
        parse_config(None, ["data.augment=heavy"])
    images = np.random.default_rng(2).integers(0, 256, (8, 24, 20, 3), dtype=np.uint8)
    source = (images, np.arange(8, dtype=np.int32))

    def first(spec):
        ds = train_dataset(source, image_size=(24, 20), batch_size=4, seed=7, flip=spec)
        return next(iter(ds))[0].numpy()

    np.testing.assert_array_equal(first(FACES), first(FACES))
    assert np.abs(first(FACES) - first(True)).mean() > 1e-3

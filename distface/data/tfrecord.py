"""Image sets as TFRecord files of tf.train.Example: encoded image, class label, identity name.

Examples are dealt round-robin over the files (example i goes to file i % F), so reading the F files interleaved
one record at a time gives back the list order, and worker w of W (W dividing F) reading files w, w+W, ... gets
exactly the examples the image-folder pipeline gives it (every W-th from w): same batches by construction.
"""
from __future__ import annotations

import mmap
import os
import struct
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from distface.config import InputError
from distface.data.folders import ImageList, natural_key
from distface.data.pipeline import decode_image_bytes, portable_images
from distface.data.recordio import atomic_outputs, read_property

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
NAME_KEY = "image/class/text"
_FEATURES = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
             NAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}


def tfrecord_paths(out: str | os.PathLike, num_files: int) -> list[Path]:
    """OUT itself for one file, else OUT's stem-00000-of-0000F.suffix ... beside it."""
    out = Path(out)
    if num_files == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k:05d}-of-{num_files:05d}{out.suffix}") for k in range(num_files)]


def write_tfrecord(images: ImageList, out: str | os.PathLike, num_files: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write the images (JPEG/PNG bytes as they are, others as lossless PNG) into num_files TFRecord files.

    Also writes insightface's `property` ("num_classes,height,width") beside them. Files appear complete or not
    at all. progress(done, total) follows the images. Returns the TFRecord paths.
    """
    if num_files < 1:
        raise InputError(f"num_files must be >= 1, got {num_files}")
    if len(images) < num_files:
        raise InputError(f"{len(images)} images cannot fill {num_files} files")
    paths = tfrecord_paths(out, num_files)
    prop = paths[0].parent / "property"
    with atomic_outputs(*paths, prop) as temps:
        writers = [tf.io.TFRecordWriter(str(tmp)) for tmp in temps[:-1]]
        try:
            height = width = 0
            for i, (data, label) in enumerate(zip(portable_images(images.paths), images.labels)):
                if i == 0:
                    height, width = decode_image_bytes(tf.constant(data)).shape[:2]
                name = images.class_names[label].encode("utf-8")
                writers[i % num_files].write(tf.train.Example(features=tf.train.Features(feature={
                    IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                    LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                    NAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[name])),
                })).SerializeToString())
                if progress is not None:
                    progress(i + 1, len(images))
        finally:
            for writer in writers:
                writer.close()
        temps[-1].write_text(f"{images.num_classes},{height},{width}\n", encoding="ascii")
    return paths


_KINDS = {IMAGE_KEY: "bytes_list", LABEL_KEY: "int64_list", NAME_KEY: "bytes_list"}


def check_example(record: bytes, where: str) -> None:
    """InputError naming the feature when a serialized tf.train.Example lacks ours or holds another type."""
    example = tf.train.Example()
    try:
        example.ParseFromString(record)
    except Exception as err:  # protobuf's DecodeError, whose module path differs between its implementations
        raise InputError(f"{where}: not a tf.train.Example ({err})") from None
    features = example.features.feature
    for key, kind in _KINDS.items():
        if key not in features:
            if key == NAME_KEY:
                continue
            raise InputError(f"{where}: no feature {key!r} (features: {', '.join(sorted(features)) or 'none'})")
        found = features[key].WhichOneof("kind")
        values = getattr(features[key], found).value if found else []
        if found != kind or len(values) != 1:
            raise InputError(f"{where}: feature {key!r} holds {len(values)} value(s) of {found or 'no kind'}, "
                             f"expected one {kind} ({'a class number' if key == LABEL_KEY else 'bytes'})")


def count_records(path: str | os.PathLike) -> int:
    """Records in a TFRecord file, from its length prefixes alone (the data is skipped, its CRC not checked)."""
    return len(record_index(path)[0])


def record_index(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset, data length) of every record in a TFRecord file, int64 each, from its length prefixes alone."""
    path = Path(path)
    size, pos = path.stat().st_size, 0
    starts, lengths = array("q"), array("q")
    with open(path, "rb") as f, (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else memoryview(b"")) as mm:
        while pos < size:  # each offset depends on the last length: a Python walk, one unpack per record
            if pos + 8 > size:
                raise InputError(f"{path}: truncated record at offset {pos}: the file ends inside its length")
            (length,) = struct.unpack_from("<Q", mm, pos)
            end = pos + 12 + length + 4  # length, its CRC, data, the data's CRC
            if end > size:
                raise InputError(f"{path}: truncated record at offset {pos}: it needs {end - pos} bytes, "
                                 f"the file has {size - pos} left")
            starts.append(pos)
            lengths.append(length)
            pos = end
    return np.frombuffer(starts, np.int64), np.frombuffer(lengths, np.int64)


class TFRecordSource:
    """TFRecord files written by write_tfrecord (or with the same features): for train_dataset.

    path: one file, a folder (its *.tfrecord files), a glob pattern, or a list of files; several files are taken
    in natural order (-00002-of- before -00010-of-). num_classes comes from `property` beside the first file,
    else from one pass over the labels. Opening walks each record's length prefix (not its data) to index the
    records for reading in any order. Attributes: files, counts (records per file), num_classes.
    """

    def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(path, (str, os.PathLike)):
            p = Path(path)
            if p.is_dir():
                files = sorted(p.glob("*.tfrecord"))
            elif p.is_file():
                files = [p]
            else:
                files = [Path(f) for f in tf.io.gfile.glob(str(p))]
            if not files:
                raise FileNotFoundError(f"no TFRecord files at {p}")
        else:
            files = [Path(f) for f in path]
            for f in files:
                if not f.is_file():
                    raise FileNotFoundError(f"TFRecord file not found: {f}")
        self.files = sorted(files, key=lambda f: natural_key(str(f)))
        index = [record_index(f) for f in self.files]
        self.counts = np.array([len(starts) for starts, _ in index], np.int64)
        if self.counts.sum() == 0:
            raise InputError(f"no records in {', '.join(map(str, self.files))}")
        # Records in list order (the files interleaved one at a time): the file and the data's byte range of each.
        rows = np.concatenate([np.arange(c) for c in self.counts])
        file_of = np.repeat(np.arange(len(self.files), dtype=np.int32), self.counts)
        order = np.lexsort((file_of, rows))
        self._file_of = file_of[order]
        self._data_start = np.concatenate([starts + 12 for starts, _ in index])[order]  # after length and its CRC
        self._data_length = np.concatenate([lengths for _, lengths in index])[order]
        self._fds = [os.open(f, os.O_RDONLY) for f in self.files]  # os.pread on them: threads share no position
        for k, (starts, lengths) in enumerate(index):  # a file of other features stops here, not in training
            if len(starts):
                check_example(os.pread(self._fds[k], int(lengths[0]), int(starts[0]) + 12),
                              f"{self.files[k]}: record at offset 0")
        prop = self.files[0].parent / "property"
        if prop.is_file():
            self.num_classes = read_property(prop)[0]
        else:
            self.num_classes = self._count_classes()

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __repr__(self) -> str:
        return f"TFRecordSource({len(self.files)} files: {len(self)} images, {self.num_classes} classes)"

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)

    # EncodedSource (distface.data.pipeline): keys are record indices in list order, read by a numpy_function at
    # their offset; the index holds no labels, so parse() reads them with the images.
    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(self), dtype=np.int64), np.full(len(self), -1, np.int32)

    def read(self, keys: tf.Tensor) -> tf.Tensor:
        def read_many(indices: np.ndarray) -> np.ndarray:
            out = []
            for i in indices:
                fd, start, length = self._fds[self._file_of[i]], int(self._data_start[i]), int(self._data_length[i])
                data = os.pread(fd, length, start)
                if len(data) != length:
                    raise OSError(f"{self.files[self._file_of[i]]}: truncated record at offset {start - 12}: "
                                  "the file shrank after it was opened")
                out.append(data)
            return np.array(out, dtype=object)

        records = tf.numpy_function(read_many, [keys], tf.string, stateful=False)
        records.set_shape(keys.shape)
        return records

    def parse(self, record: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._parse(record)

    def describe(self, key: int) -> str:
        file = self.files[self._file_of[key]]
        return f"{file}: record at offset {self._data_start[key] - 12} (record {key + 1} of {len(self)} in list order)"

    def examples(self, num_shards: int, shard_index: int) -> tuple[tf.data.Dataset, int]:
        """(dataset of (encoded image, int32 label) of one shard in list order, read sequentially; its size)."""
        if len(self.files) % num_shards == 0:
            # Distribution: whole files per worker, so each worker reads only its own share of the bytes.
            mine = list(range(shard_index, len(self.files), num_shards))
            ds, size = self._records([self.files[k] for k in mine]), int(self.counts[mine].sum())
        else:
            # Files do not divide among the workers: each reads them all and keeps every num_shards-th record.
            ds = self._records(self.files).shard(num_shards, shard_index)
            size = len(range(shard_index, len(self), num_shards))
        return ds.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), size

    def _count_classes(self) -> int:
        """1 + the largest label, in one pass over every record; a record whose label cannot be read is named."""
        from distface.data.failures import failure_reason

        labels = self._records(self.files).enumerate().map(lambda i, r: (i, self._parse(r)[1]))
        expected, largest = 0, -1
        for keys, values in labels.ignore_errors().batch(4096).as_numpy_iterator():
            if keys[-1] != expected + len(keys) - 1:  # a gap: the first key missing is the record that failed
                bad = expected + int(np.flatnonzero(keys != np.arange(expected, expected + len(keys)))[0])
                raise InputError(f"{self.describe(bad)}: {failure_reason(self._label_of, bad)}")
            expected, largest = expected + len(keys), max(largest, int(values.max()))
        if expected != len(self):
            raise InputError(f"{self.describe(expected)}: {failure_reason(self._label_of, expected)}")
        return largest + 1

    def _label_of(self, key: tf.Tensor) -> tf.Tensor:
        return self._parse(self.read(tf.reshape(key, [1]))[0])[1]

    @staticmethod
    def _parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = tf.io.parse_single_example(record, _FEATURES)
        return example[IMAGE_KEY], tf.cast(example[LABEL_KEY], tf.int32)

    @staticmethod
    def _records(files: list[Path]) -> tf.data.Dataset:
        """Records of the files interleaved one at a time: file order is round-robin list order."""
        names = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
        return names.interleave(tf.data.TFRecordDataset, cycle_length=len(files), block_length=1,
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

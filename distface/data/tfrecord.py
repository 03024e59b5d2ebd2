"""Image sets as TFRecord files of tf.train.Example: encoded image, class label, identity name.

Examples are dealt round-robin over the files (example i goes to file i % F), so reading the F files interleaved
one record at a time gives back the list order, and worker w of W (W dividing F) reading files w, w+W, ... gets
exactly the examples the image-folder pipeline gives it (every W-th from w): same batches by construction.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

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
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    if len(images) < num_files:
        raise ValueError(f"{len(images)} images cannot fill {num_files} files")
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


def count_records(path: str | os.PathLike) -> int:
    """Records in a TFRecord file, from its length prefixes alone (the data is skipped, its CRC not checked)."""
    path = Path(path)
    size, count, pos = path.stat().st_size, 0, 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: truncated record at offset {pos}: the file ends inside its length")
            end = pos + 12 + struct.unpack("<Q", head)[0] + 4  # length, its CRC, data, the data's CRC
            if end > size:
                raise ValueError(f"{path}: truncated record at offset {pos}: it needs {end - pos} bytes, "
                                 f"the file has {size - pos} left")
            pos, count = end, count + 1
    return count


class TFRecordSource:
    """TFRecord files written by write_tfrecord (or with the same features): for train_dataset.

    path: one file, a folder (its *.tfrecord files), a glob pattern, or a list of files; several files are taken
    in natural order (-00002-of- before -00010-of-). num_classes comes from `property` beside the first file,
    else from one pass over the labels. Attributes: files, counts (records per file), num_classes.
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
        self.counts = np.array([count_records(f) for f in self.files], np.int64)
        if self.counts.sum() == 0:
            raise ValueError(f"no records in {', '.join(map(str, self.files))}")
        prop = self.files[0].parent / "property"
        if prop.is_file():
            self.num_classes = read_property(prop)[0]
        else:
            labels = self._records(self.files).map(lambda r: tf.io.parse_single_example(r, _FEATURES)[LABEL_KEY])
            self.num_classes = int(labels.reduce(tf.constant(-1, tf.int64), tf.maximum)) + 1

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __repr__(self) -> str:
        return f"TFRecordSource({len(self.files)} files: {len(self)} images, {self.num_classes} classes)"

    # EncodedSource (distface.data.pipeline): keys are the encoded images themselves, read in file order.
    def examples(self, num_shards: int, shard_index: int) -> tuple[tf.data.Dataset, int]:
        if len(self.files) % num_shards == 0:
            # Distribution: whole files per worker, so each worker reads only its own share of the bytes.
            mine = list(range(shard_index, len(self.files), num_shards))
            ds, size = self._records([self.files[k] for k in mine]), int(self.counts[mine].sum())
        else:
            # Files do not divide among the workers: each reads them all and keeps every num_shards-th record.
            ds = self._records(self.files).shard(num_shards, shard_index)
            size = len(range(shard_index, len(self), num_shards))
        return ds.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), size

    def read(self, keys: tf.Tensor) -> tf.Tensor:
        return keys

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

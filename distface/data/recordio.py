"""MXNet RecordIO image sets in insightface's layout (train.rec, train.idx, property), read and written without mxnet.

The format, as dmlc-core's recordio and mxnet.recordio write it:
- a record on disk is uint32 magic 0xced7230a, uint32 lrecord = cflag << 29 | length, `length` bytes, then zero
  padding to a multiple of 4. The writer cuts a payload wherever the magic number sits at a 4-aligned position and
  drops those 4 bytes (cflag 1: first part, 2: middle, 3: last; 0: the whole payload); the reader puts them back.
- a payload is an IRHeader '<IfQQ' (flag, label, id, id2); flag > 0 means `flag` float32 labels follow it (the
  header's own label is then unused), then the encoded image.
- the .idx file has one "key<TAB>byte offset" line per record.
- insightface: record 0 has flag 2 and labels (first identity key, end identity key); images are keys 1 .. first-1;
  identity records [first, end) hold the (first image key, end image key) range of each class, in class order.
- `property` beside the .rec reads "num_classes,height,width".
"""
from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from distface.config import InputError
from distface.data.folders import ImageList
from distface.data.pipeline import decode_image_bytes, portable_images

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
_SCAN_CHUNK = 1 << 18  # records whose headers are gathered at once: bounds the index arrays to a few MB


def _pad4(n):
    return (n + 3) & ~3


def encode_record(payload: bytes) -> bytes:
    """The bytes on disk of one payload: split where the magic number sits at a 4-aligned position, padded."""
    if len(payload) > _MAX_LENGTH:
        raise InputError(f"RecordIO records hold at most {_MAX_LENGTH} bytes, got {len(payload)}")
    words = np.frombuffer(payload, "<u4", len(payload) // 4)
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    starts, ends = [0] + [c + 4 for c in cuts], cuts + [len(payload)]
    out = bytearray()
    for k, (start, end) in enumerate(zip(starts, ends)):
        cflag = 0 if len(starts) == 1 else 1 if k == 0 else 3 if k == len(starts) - 1 else 2
        out += struct.pack("<II", MAGIC, cflag << _LENGTH_BITS | (end - start)) + payload[start:end]
    out += bytes(_pad4(len(out)) - len(out))  # inner parts are multiples of 4: only the end needs padding
    return bytes(out)


def pack_payload(label: float | list[float], image: bytes = b"", key: int = 0) -> bytes:
    """IRHeader + image, as mxnet.recordio.pack: a list label is stored as `flag` float32 values after the header."""
    if isinstance(label, (int, float)):
        return _IR_HEADER.pack(0, label, key, 0) + image
    labels = np.asarray(label, "<f4")
    return _IR_HEADER.pack(labels.size, 0.0, key, 0) + labels.tobytes() + image


def unpack_payload(payload: bytes) -> tuple[np.ndarray, bytes]:
    """(float32 labels: the header's label, or its `flag` extra labels; image bytes) of one payload."""
    if len(payload) < _IR_HEADER.size:
        raise InputError(f"{len(payload)} bytes, shorter than the {_IR_HEADER.size}-byte IRHeader")
    flag, label, _, _ = _IR_HEADER.unpack_from(payload)
    if flag == 0:
        return np.array([label], np.float32), payload[_IR_HEADER.size:]
    end = _IR_HEADER.size + 4 * flag
    if len(payload) < end:
        raise InputError(f"IRHeader announces {flag} labels but the record has {len(payload)} bytes")
    return np.frombuffer(payload, "<f4", flag, _IR_HEADER.size).astype(np.float32), payload[end:]


class RecordIOSource:
    """Images of an insightface .rec, read by offset: for distface.data.pipeline.train_dataset.

    Opening reads the .idx, the `property` file and every image record's 8-byte frame and IRHeader (not the
    images), so a bad magic number, a truncated record or an index past the end stops here, naming the file and
    the byte offset. Attributes: labels (int32 [N]), num_classes, record_offsets (int64 [N]), rec_path, idx_path.
    """

    def __init__(self, path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        rec = Path(path)
        if rec.is_dir():
            rec = rec / "train.rec"
        if not rec.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {rec}")
        idx = Path(idx_path) if idx_path is not None else rec.with_suffix(".idx")
        if not idx.is_file():
            raise FileNotFoundError(f"RecordIO index not found: {idx} (the .idx written beside {rec.name})")
        self.rec_path, self.idx_path = rec, idx
        self._file = open(rec, "rb", buffering=0)  # os.pread on its descriptor: no shared position, threads are safe
        self._size = os.fstat(self._file.fileno()).st_size
        keys, offsets = self._read_index()  # sorted by key

        image_keys = keys
        if keys.size and keys[0] == 0:
            labels, _ = self._unpack_at(int(offsets[0]))
            if labels.size >= 2:  # insightface's header record (flag 2): its readers test flag > 0
                first = int(labels[0])
                image_keys = np.arange(1, first)
        if image_keys.size == 0:
            raise InputError(f"{rec}: no image records")
        rows = np.minimum(np.searchsorted(keys, image_keys), len(keys) - 1)
        missing = np.flatnonzero(keys[rows] != image_keys)
        if missing.size:
            raise InputError(f"{idx}: no key {image_keys[missing[0]]}, which record 0 of {rec.name} lists as an "
                             f"image (images are keys 1..{image_keys[-1]})")
        self.record_offsets = offsets[rows]
        self._image_start, self._image_length, self._split, labels = self._scan(self.record_offsets)
        bad = np.flatnonzero(~np.isfinite(labels) | (labels < 0) | (labels != np.floor(labels)))
        if bad.size:
            raise InputError(f"{rec}: record at offset {self.record_offsets[bad[0]]} has label {labels[bad[0]]}, "
                             "not a class number (an integer >= 0)")
        self.labels = labels.astype(np.int32)
        self.labels.setflags(write=False)
        self.num_classes = self._num_classes()

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"RecordIOSource({str(self.rec_path)!r}: {len(self)} images, {self.num_classes} classes)"

    def close(self) -> None:
        self._file.close()

    def read_image(self, index: int) -> bytes:
        """Encoded bytes of image `index` (0-based, in key order)."""
        if self._split[index]:
            return self._unpack_at(int(self.record_offsets[index]))[1]
        start, length = int(self._image_start[index]), int(self._image_length[index])
        data = os.pread(self._file.fileno(), length, start)
        if len(data) != length:
            raise OSError(f"{self.rec_path}: truncated record at offset {self.record_offsets[index]}: "
                          "the file shrank after it was opened")
        return data

    # EncodedSource (distface.data.pipeline): keys are image indices, read by a numpy_function at their offset.
    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(self), dtype=np.int64), self.labels

    def read(self, keys: tf.Tensor) -> tf.Tensor:
        # A numpy_function, because no TF op reads a byte range of a file. os.pread releases the GIL while it
        # waits on the disk, and the decoding after it runs in TF's parallel map.
        def read_many(indices: np.ndarray) -> np.ndarray:
            return np.array([self.read_image(int(i)) for i in indices], dtype=object)

        data = tf.numpy_function(read_many, [keys], tf.string, stateful=False)
        data.set_shape(keys.shape)
        return data

    def parse(self, record: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return record, label  # read() gives the image bytes; the label came from the index

    def describe(self, key: int) -> str:
        return f"{self.rec_path}: record at offset {self.record_offsets[key]} (image {key + 1} of {len(self)})"

    def _read_index(self) -> tuple[np.ndarray, np.ndarray]:
        text = self.idx_path.read_text(encoding="ascii", errors="replace")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy 1.x only warns when it cannot parse to the end; 2.x raises
            try:  # one C pass: splitting MS1M's 5.8M lines into Python strings would take seconds and GBs
                numbers = np.fromstring(text, dtype=np.int64, sep=" ")
            except (ValueError, DeprecationWarning):
                numbers = None
        if numbers is None or numbers.size != 2 * (text.count("\n") + (not text.endswith("\n"))):
            for no, line in enumerate(text.splitlines(), 1):  # name the first bad line; blank lines pass
                fields = line.split()
                if fields and (len(fields) != 2 or not all(f.isdigit() for f in fields)):
                    raise InputError(f"{self.idx_path}:{no}: expected 'key<TAB>offset', got {line[:60]!r}")
            if numbers is None or numbers.size % 2:
                raise InputError(f"{self.idx_path}: not a RecordIO index ('key<TAB>offset' lines)")
        table = numbers.reshape(-1, 2)
        keys, offsets = table[:, 0], table[:, 1]
        if keys.size == 0:
            raise InputError(f"{self.idx_path}: no records")
        past = np.flatnonzero((offsets < 0) | (offsets + 8 > self._size))
        if past.size:
            k = past[0]
            raise InputError(f"{self.idx_path}: key {keys[k]} points at offset {offsets[k]}, past the end of "
                             f"{self.rec_path.name} ({self._size} bytes)")
        order = np.argsort(keys, kind="stable")
        keys, offsets = keys[order], offsets[order]
        twice = np.flatnonzero(np.diff(keys) == 0)
        if twice.size:
            raise InputError(f"{self.idx_path}: key {keys[twice[0]]} appears twice")
        return keys, offsets

    def _unpack_at(self, offset: int) -> tuple[np.ndarray, bytes]:
        payload = self._read_record(offset)
        try:
            return unpack_payload(payload)
        except ValueError as e:
            raise InputError(f"{self.rec_path}: record at offset {offset}: {e}") from None

    def _read_record(self, offset: int) -> bytes:
        """The payload of the record at offset, its parts joined."""
        parts, pos = [], offset
        while True:
            head = os.pread(self._file.fileno(), 8, pos)
            if len(head) < 8:
                raise InputError(f"{self.rec_path}: truncated record at offset {pos}: the file ends inside its "
                                 "8-byte header")
            magic, lrecord = struct.unpack("<II", head)
            if magic != MAGIC:
                raise InputError(f"{self.rec_path}: bad magic 0x{magic:08x} at offset {pos} "
                                 f"(expected 0x{MAGIC:08x})")
            cflag, length = lrecord >> _LENGTH_BITS, lrecord & _MAX_LENGTH
            if pos == offset and cflag > 1:
                raise InputError(f"{self.rec_path}: record at offset {pos} starts with continuation flag {cflag}: "
                                 "the .idx points inside a split record")
            if pos != offset and cflag not in (2, 3):
                raise InputError(f"{self.rec_path}: split record at offset {offset}: its part at offset {pos} has "
                                 f"continuation flag {cflag}, expected 2 or 3")
            data = os.pread(self._file.fileno(), length, pos + 8)
            if len(data) < length:
                raise InputError(f"{self.rec_path}: truncated record at offset {pos}: its header announces "
                                 f"{length} bytes, the file ends after {len(data)}")
            parts.append(data)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            pos += 8 + _pad4(length)

    def _scan(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(image byte start, image length, split-record mask, float labels) of the records at offsets.

        Frames and IRHeaders are gathered with numpy from a memory map, a chunk of records at a time, with no
        Python loop per record: 5.8M records (MS1MV2) open in about 2 s once the file is in the page cache (from a
        cold disk, readahead makes it about one sequential read of the file).
        """
        n = len(offsets)
        start, length, split = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
        labels = np.zeros(n, np.float64)
        mm = np.memmap(self.rec_path, np.uint8, "r")
        for lo in range(0, n, _SCAN_CHUNK):
            off = offsets[lo:lo + _SCAN_CHUNK]
            frame = mm[off[:, None] + np.arange(8)].view("<u4")
            magic, cflag = frame[:, 0], frame[:, 1] >> _LENGTH_BITS
            size = (frame[:, 1] & _MAX_LENGTH).astype(np.int64)
            whole = cflag == 0
            self._raise_first(magic != MAGIC,
                              lambda k: f"bad magic 0x{magic[k]:08x} at offset {off[k]} (expected 0x{MAGIC:08x})")
            self._raise_first(cflag > 1, lambda k: f"record at offset {off[k]} starts with continuation flag "
                                                   f"{cflag[k]}: the .idx points inside a split record")
            self._raise_first(whole & (off + 8 + size > self._size),
                              lambda k: f"truncated record at offset {off[k]}: its header announces {size[k]} "
                                        f"bytes, the file ends after {self._size - off[k] - 8}")
            self._raise_first(whole & (size < _IR_HEADER.size),
                              lambda k: f"record at offset {off[k]} has {size[k]} bytes, fewer than the "
                                        f"{_IR_HEADER.size}-byte IRHeader")
            rows = np.flatnonzero(whole)
            off_w, size_w = off[rows], size[rows]
            ir = mm[(off_w + 8)[:, None] + np.arange(8)].view("<u4")
            flag, label = ir[:, 0].astype(np.int64), ir[:, 1].view("<f4").astype(np.float64)
            extra = flag > 0
            self._raise_first(extra & (size_w < _IR_HEADER.size + 4 * flag),
                              lambda k: f"record at offset {off_w[k]}: its IRHeader announces {flag[k]} labels "
                                        f"but the record has {size_w[k]} bytes")
            # With several labels mxnet stores them after the header, the class first.
            label[extra] = mm[(off_w[extra] + 8 + _IR_HEADER.size)[:, None] + np.arange(4)].view("<f4")[:, 0]
            body = _IR_HEADER.size + 4 * flag
            start[lo + rows], length[lo + rows], labels[lo + rows] = off_w + 8 + body, size_w - body, label
            for k in np.flatnonzero(~whole):  # split records (rare): join their parts in Python
                labels[lo + k] = self._unpack_at(int(off[k]))[0][0]
                split[lo + k] = True
        return start, length, split, labels

    def _raise_first(self, bad: np.ndarray, message: Callable[[int], str]) -> None:
        hits = np.flatnonzero(bad)
        if hits.size:
            raise InputError(f"{self.rec_path}: {message(hits[0])}")

    def _num_classes(self) -> int:
        found = int(self.labels.max()) + 1 if len(self) else 0
        prop = self.rec_path.parent / "property"
        if not prop.is_file():
            return found
        declared = read_property(prop)[0]
        if found > declared:
            k = int(np.argmax(self.labels))
            raise InputError(f"{prop} declares {declared} classes but {self.rec_path.name} has label "
                             f"{self.labels[k]} at offset {self.record_offsets[k]}")
        return declared


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """(num_classes, height, width) of an insightface `property` file."""
    text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    fields = text.split(",")
    if len(fields) != 3 or not all(f.strip().isdigit() for f in fields):
        raise InputError(f"{path}: expected 'num_classes,height,width', got {text[:60]!r}")
    num_classes, height, width = (int(f) for f in fields)
    return num_classes, height, width


def write_recordio(images: ImageList, rec_path: str | os.PathLike,
                   progress: Callable[[int, int], None] | None = None) -> tuple[Path, Path, Path]:
    """Pack an image list as insightface does: OUT.rec, OUT.idx and `property` beside them -> their paths.

    Records: 0 the header, 1..N the images in list order (JPEG/PNG bytes as they are, other formats as lossless
    PNG), N+1..N+C one per class with its image key range. Labels must be grouped (non-decreasing), as
    scan_identity_folders gives them. Files appear complete or not at all. progress(done, total) follows the images.
    """
    rec = Path(rec_path)
    idx, prop = rec.with_suffix(".idx"), rec.parent / "property"
    labels = np.asarray(images.labels)
    if np.any(np.diff(labels) < 0):
        raise InputError("write_recordio needs the images grouped by label (non-decreasing labels)")
    if len(images) == 0:
        raise InputError("write_recordio: no images to pack")
    n, num_classes = len(images), images.num_classes
    starts = np.searchsorted(labels, np.arange(num_classes + 1))  # image i is key i + 1
    with atomic_outputs(rec, idx, prop) as temps, open(temps[0], "wb") as rec_file, \
            open(temps[1], "w", encoding="ascii") as idx_file:
        def put(key: int, payload: bytes) -> None:
            idx_file.write(f"{key}\t{rec_file.tell()}\n")
            rec_file.write(encode_record(payload))

        put(0, pack_payload([n + 1, n + 1 + num_classes]))
        height = width = 0
        for i, (data, label) in enumerate(zip(portable_images(images.paths), labels)):
            if i == 0:
                height, width = decode_image_bytes(tf.constant(data)).shape[:2]
            put(i + 1, pack_payload(float(label), data, key=i + 1))
            if progress is not None:
                progress(i + 1, n)
        for c in range(num_classes):
            put(n + 1 + c, pack_payload([starts[c] + 1, starts[c + 1] + 1], key=n + 1 + c))
        temps[2].write_text(f"{num_classes},{height},{width}\n", encoding="ascii")
    return rec, idx, prop


@contextlib.contextmanager
def atomic_outputs(*paths: Path) -> Iterator[list[Path]]:
    """Temporary paths beside `paths`, renamed onto them when the block succeeds and removed when it fails."""
    for path in paths:
        if not path.parent.is_dir():
            raise FileNotFoundError(f"output folder {path.parent} does not exist")
    temps = [path.parent / f".{path.name}.{os.getpid()}.tmp" for path in paths]
    try:
        yield temps
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in zip(temps, paths):
        os.replace(tmp, path)

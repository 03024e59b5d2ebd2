"""MXNet RecordIO (insightface layout): writer and reader against a spec-level reference, errors, the pipeline."""

import io
import shutil
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from distface.data.__main__ import main as data_main
from distface.data.folders import ImageList, scan_identity_folders
from distface.data.orl import orl_root, orl_split
from distface.data.pipeline import decode_image, decode_image_bytes, train_dataset
from distface.data.recordio import RecordIOSource, encode_record, pack_payload, write_recordio

MAGIC = 0xCED7230A
MAGIC_LE = bytes([0x0A, 0x23, 0xD7, 0xCE])  # the magic number as it sits in a little-endian file


def reference_records(rec_path, idx_path):
    """{key: (flag, label, id, extra labels, image bytes)}: a loop-by-loop reader written from the format spec."""
    data = open(rec_path, "rb").read()
    records = {}
    for line in open(idx_path):
        key, offset = (int(f) for f in line.split("\t"))
        payload, pos = b"", offset
        while True:
            magic, lrecord = struct.unpack("<II", data[pos:pos + 8])
            assert magic == MAGIC
            cflag, length = lrecord >> 29, lrecord & (2 ** 29 - 1)
            payload += data[pos + 8:pos + 8 + length]
            pos += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                break
            payload += MAGIC_LE
        flag, label, rid, rid2 = struct.unpack("<IfQQ", payload[:24])
        extra = struct.unpack(f"<{flag}f", payload[24:24 + 4 * flag])
        records[key] = (flag, label, rid, extra, payload[24 + 4 * flag:])
    return records


def pil_pixels(data_or_path):
    image = Image.open(data_or_path if not isinstance(data_or_path, bytes) else io.BytesIO(data_or_path))
    return np.asarray(image.convert("L"))


@pytest.fixture(scope="module")
def orl_rec(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    images = orl_split(range(1, 41))
    write_recordio(images, out / "train.rec")
    return out, images


def test_orl_writer_follows_insightface_layout(orl_rec):
    out, images = orl_rec
    records = reference_records(out / "train.rec", out / "train.idx")
    assert sorted(records) == list(range(441))  # header, 400 images, 40 identities
    flag, _, _, extra, body = records[0]
    assert (flag, extra, body) == (2, (401.0, 441.0), b"")
    for c in range(40):
        flag, _, rid, extra, body = records[401 + c]
        assert (flag, rid, extra, body) == (2, 401 + c, (1.0 + 10 * c, 11.0 + 10 * c), b"")
    for i, path in enumerate(images.paths):
        flag, label, rid, _, body = records[i + 1]
        assert (flag, label, rid) == (0, float(i // 10), i + 1)
        assert body.startswith(b"\x89PNG")  # PGM stored as lossless PNG of what the folder pipeline decodes
        np.testing.assert_array_equal(pil_pixels(body), decode_image(tf.constant(path)).numpy()[..., 0])
        raw = open(path, "rb").read()
        if raw.startswith(b"P5\n92 112\n255\n") and len(raw) == 14 + 92 * 112:  # a clean PGM: PIL reads it too
            np.testing.assert_array_equal(pil_pixels(body), pil_pixels(path))
    assert (out / "property").read_text() == "40,112,92\n"


def test_orl_reader_round_trip(orl_rec):
    out, images = orl_rec
    source = RecordIOSource(out)  # a folder means folder/train.rec
    assert len(source) == 400 and source.num_classes == 40
    np.testing.assert_array_equal(source.labels, images.labels)
    records = reference_records(out / "train.rec", out / "train.idx")
    for i in range(0, 400, 7):
        assert source.read_image(i) == records[i + 1][4]
    decoded = tf.data.Dataset.range(400).batch(64).map(source.read).unbatch().map(decode_image_bytes)
    for image, path in zip(decoded, images.paths):
        np.testing.assert_array_equal(image.numpy(), decode_image(tf.constant(path)).numpy(), err_msg=path)


def test_train_dataset_from_rec_equals_folder(orl_rec):
    out, images = orl_rec
    source = RecordIOSource(out / "train.rec", out / "train.idx")
    for cache, shards, index in [(True, 1, 0), (False, 1, 0), (False, 3, 2)]:
        kwargs = dict(image_size=(112, 96), batch_size=64, seed=7, cache=cache, num_shards=shards, shard_index=index)
        for (x1, y1), (x2, y2) in zip(train_dataset(images, **kwargs).take(2), train_dataset(source, **kwargs).take(2)):
            np.testing.assert_array_equal(x1.numpy(), x2.numpy())
            np.testing.assert_array_equal(y1.numpy(), y2.numpy())


def test_split_record_encoding():
    # The magic at aligned offsets 0 and 8 splits the record; at offset 13 (not aligned) it is data.
    payload = MAGIC_LE + b"wxyz" + MAGIC_LE + b"q" + MAGIC_LE
    expected = (struct.pack("<II", MAGIC, 1 << 29 | 0)
                + struct.pack("<II", MAGIC, 2 << 29 | 4) + b"wxyz"
                + struct.pack("<II", MAGIC, 3 << 29 | 5) + b"q" + MAGIC_LE + bytes(3))
    assert encode_record(payload) == expected
    assert encode_record(b"abcde") == struct.pack("<II", MAGIC, 5) + b"abcde" + bytes(3)
    assert encode_record(b"") == struct.pack("<II", MAGIC, 0)


def write_rec(path, payloads, idx_lines=None):
    """A .rec of the payloads under keys 0..n-1, and its .idx."""
    offsets, data = [], b""
    for payload in payloads:
        offsets.append(len(data))
        data += encode_record(payload)
    path.write_bytes(data)
    path.with_suffix(".idx").write_text("".join(idx_lines or [f"{k}\t{o}\n" for k, o in enumerate(offsets)]))
    return offsets


def test_split_records_plain_layout_and_label_arrays(tmp_path):
    # No insightface header: every key is an image; a label array gives its first value as the class.
    images = [MAGIC_LE * 3 + b"jpeg?", b"x" * 4 + MAGIC_LE + b"yz", b"plain"]
    payloads = [pack_payload(2.0, images[0], key=0), pack_payload([5.0, 0.0], images[1], key=1),
                pack_payload(0.0, images[2], key=2)]
    write_rec(tmp_path / "plain.rec", payloads)
    source = RecordIOSource(tmp_path / "plain.rec")
    assert [source.read_image(i) for i in range(3)] == images
    np.testing.assert_array_equal(source.labels, [2, 5, 0])
    assert source.num_classes == 6  # no property file: largest label + 1
    assert source.read(tf.constant([2, 0, 1, 2], tf.int64)).numpy().tolist() == [images[2], *images[:2], images[2]]

    first = encode_record(payloads[0])
    inner = first.index(MAGIC_LE, 8)  # the second part of the split first record
    (tmp_path / "plain.idx").write_text(f"0\t{inner}\n")
    with pytest.raises(ValueError, match=rf"plain\.rec: record at offset {inner} starts with continuation flag 2"):
        RecordIOSource(tmp_path / "plain.rec")
    (tmp_path / "cut.rec").write_bytes(first[:-8])  # the last part is cut short
    (tmp_path / "cut.idx").write_text("0\t0\n")
    with pytest.raises(ValueError, match=r"cut\.rec: truncated record at offset \d+: its header announces"):
        RecordIOSource(tmp_path / "cut.rec")


def corrupt(orl_rec, tmp_path):
    out, _ = orl_rec
    for name in ("train.rec", "train.idx", "property"):
        shutil.copy(out / name, tmp_path / name)
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "train.idx").read_text().splitlines()]
    return tmp_path / "train.rec", offsets


def test_bad_magic_names_file_and_offset(orl_rec, tmp_path):
    rec, offsets = corrupt(orl_rec, tmp_path)
    data = bytearray(rec.read_bytes())
    data[offsets[37]:offsets[37] + 4] = b"\x12\x34\x56\x78"
    rec.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"train\.rec: bad magic 0x78563412 at offset {offsets[37]}\b"):
        RecordIOSource(rec)


def test_truncated_record_names_file_and_offset(orl_rec, tmp_path):
    rec, offsets = corrupt(orl_rec, tmp_path)
    data = rec.read_bytes()
    rec.write_bytes(data[:offsets[200] + 100])  # record 200 loses its tail, 201.. are gone, the .idx lists them
    with pytest.raises(ValueError, match=rf"train\.idx: key 201 points at offset {offsets[201]}, past the end "
                                         rf"of train\.rec \({offsets[200] + 100} bytes\)"):
        RecordIOSource(rec)
    rec.write_bytes(data[:offsets[400] + 50])  # the last image record loses its tail
    lines = (tmp_path / "train.idx").read_text().splitlines()
    (tmp_path / "train.idx").write_text("\n".join(lines[:401]) + "\n")  # header + images; identities dropped
    with pytest.raises(ValueError, match=rf"train\.rec: truncated record at offset {offsets[400]}: its header "
                                         r"announces \d+ bytes, the file ends after 42"):
        RecordIOSource(rec)
    (tmp_path / "train.idx").write_text("\n".join(lines[:201]) + "\n")
    with pytest.raises(ValueError, match=r"train\.idx: no key 201, which record 0 of train\.rec lists as an image"):
        RecordIOSource(rec)


def test_missing_and_malformed_files(orl_rec, tmp_path):
    rec, _ = corrupt(orl_rec, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"RecordIO file not found: .*nowhere\.rec"):
        RecordIOSource(tmp_path / "nowhere.rec")
    with pytest.raises(FileNotFoundError, match=r"RecordIO index not found: .*other\.idx"):
        RecordIOSource(rec, tmp_path / "other.idx")
    (tmp_path / "train.idx").write_text("0\t0\n1\tbanana\n")
    with pytest.raises(ValueError, match=r"train\.idx:2: expected 'key<TAB>offset'"):
        RecordIOSource(rec)
    write_rec(rec, [pack_payload(3.0, b"image")])
    (tmp_path / "property").write_text("40;112;92")
    with pytest.raises(ValueError, match=r"property: expected 'num_classes,height,width'"):
        RecordIOSource(rec)
    (tmp_path / "property").write_text("3,112,92")
    with pytest.raises(ValueError, match=r"property declares 3 classes but train\.rec has label 3 at offset 0"):
        RecordIOSource(rec)
    write_rec(rec, [pack_payload(-1.0, b"image")])
    with pytest.raises(ValueError, match=r"record at offset 0 has label -1\.0, not a class number"):
        RecordIOSource(rec)


def test_cli_pack_recordio(tmp_path, capsys):
    assert data_main(["pack", str(orl_root()), str(tmp_path / "orl.rec"), "--extensions", ".pgm"]) == 0
    err = capsys.readouterr().err
    assert "packed 400/400 images |" in err and "images/s" in err
    source = RecordIOSource(tmp_path / "orl.rec")
    folder = scan_identity_folders(orl_root(), extensions=(".pgm",))
    np.testing.assert_array_equal(source.labels, folder.labels)
    np.testing.assert_array_equal(decode_image_bytes(tf.constant(source.read_image(123))).numpy(),
                                  decode_image(tf.constant(folder.paths[123])).numpy())

    assert data_main(["pack", str(tmp_path / "none"), str(tmp_path / "x.rec"), "--quiet"]) == 2
    assert "distface: image root" in capsys.readouterr().err
    assert not (tmp_path / "x.rec").exists() and not list(tmp_path.glob(".*.tmp"))


def test_writer_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.pgm").write_bytes(b"P2\n1 1\n255\n0\n")  # ASCII PGM: not readable
    images = ImageList((str(tmp_path / "a" / "1.pgm"),), np.zeros(1), ("a",))
    with pytest.raises(ValueError, match=r"1\.pgm: cannot be read as an image: .*P5"):
        write_recordio(images, tmp_path / "bad.rec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]

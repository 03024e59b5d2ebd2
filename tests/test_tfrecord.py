"""TFRecord image sets: writer schema, round trip, file-level sharding equal to the folder pipeline's, errors."""

import numpy as np
import pytest
import tensorflow as tf

from distface.data.__main__ import main as data_main
from distface.data.orl import orl_root, orl_split
from distface.data.pipeline import decode_image, decode_image_bytes, train_dataset
from distface.data.tfrecord import TFRecordSource, count_records, tfrecord_paths, write_tfrecord


@pytest.fixture(scope="module")
def orl_tfrecords(tmp_path_factory):
    out = tmp_path_factory.mktemp("tfr")
    images = orl_split(range(1, 13))  # 120 images
    return write_tfrecord(images, out / "orl.tfrecord", num_files=4), images


def read_examples(files):
    """(image bytes, label, name) of every record, file by file, parsed with the protobuf classes directly."""
    out = []
    for f in files:
        for record in tf.data.TFRecordDataset(str(f)):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            out.append((feature["image/encoded"].bytes_list.value[0], feature["image/class/label"].int64_list.value[0],
                        feature["image/class/text"].bytes_list.value[0].decode()))
    return out


def test_writer_deals_examples_round_robin(orl_tfrecords):
    files, images = orl_tfrecords
    assert [f.name for f in files] == [f"orl-{k:05d}-of-00004.tfrecord" for k in range(4)]
    assert (files[0].parent / "property").read_text() == "12,112,92\n"
    for k, f in enumerate(files):
        examples = read_examples([f])
        assert len(examples) == count_records(f) == 30
        for j, (data, label, name) in enumerate(examples):
            i = 4 * j + k  # file k holds examples k, k+4, ...
            assert label == images.labels[i] and name == images.class_names[label]
            np.testing.assert_array_equal(decode_image_bytes(tf.constant(data)).numpy(),
                                          decode_image(tf.constant(images.paths[i])).numpy())


def test_source_round_trip_in_list_order(orl_tfrecords):
    files, images = orl_tfrecords
    source = TFRecordSource(files[0].parent)  # a folder: its *.tfrecord files
    assert source.files == files and len(source) == 120 and source.num_classes == 12
    ds, size = source.examples(1, 0)
    got = [(key.numpy(), label.numpy()) for key, label in ds]
    assert size == 120 and [label for _, label in got] == list(images.labels)
    by_file = read_examples(files)
    expected = [by_file[30 * (i % 4) + i // 4][0] for i in range(120)]
    assert [data for data, _ in got] == expected


def test_source_without_property_counts_classes(tmp_path):
    images = orl_split([3, 1, 2])
    files = write_tfrecord(images, tmp_path / "x.tfrecord")
    (tmp_path / "property").unlink()
    source = TFRecordSource(str(tmp_path / "*.tfrecord"))  # a glob
    assert source.files == files and source.num_classes == 3 and list(source.counts) == [30]


def test_train_dataset_from_tfrecord_equals_folder(orl_tfrecords):
    files, images = orl_tfrecords
    source = TFRecordSource(files)
    # 1 and 2 workers take whole files (4 divides evenly); 3 workers read all and keep every 3rd record.
    for shards, index, cache in [(1, 0, True), (2, 1, False), (3, 2, False)]:
        kwargs = dict(image_size=(56, 48), batch_size=16, seed=11, cache=cache, num_shards=shards, shard_index=index)
        for (x1, y1), (x2, y2) in zip(train_dataset(images, **kwargs).take(3), train_dataset(source, **kwargs).take(3)):
            np.testing.assert_array_equal(x1.numpy(), x2.numpy())
            np.testing.assert_array_equal(y1.numpy(), y2.numpy())


def test_errors_name_the_file(orl_tfrecords, tmp_path):
    files, _ = orl_tfrecords
    data = files[0].read_bytes()
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(data[:len(data) - 10])
    with pytest.raises(ValueError, match=r"cut\.tfrecord: truncated record at offset \d+: it needs \d+ bytes"):
        count_records(cut)
    with pytest.raises(ValueError, match=r"cut\.tfrecord: truncated record"):
        TFRecordSource(cut)
    with pytest.raises(FileNotFoundError, match="no TFRecord files at"):
        TFRecordSource(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match=r"TFRecord file not found: .*gone\.tfrecord"):
        TFRecordSource([files[0], tmp_path / "gone.tfrecord"])
    assert tfrecord_paths(tmp_path / "a.tfrecord", 1) == [tmp_path / "a.tfrecord"]


def test_cli_pack_tfrecord(tmp_path, capsys):
    out = tmp_path / "orl.tfrecord"
    assert data_main(["pack", str(orl_root()), str(out), "--files", "2", "--extensions", "pgm", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    source = TFRecordSource(tmp_path)
    assert len(source) == 400 and source.num_classes == 40 and len(source.files) == 2
    assert data_main(["pack", str(orl_root()), str(tmp_path / "o.rec"), "--files", "2"]) == 2
    assert "--files applies to --format tfrecord only" in capsys.readouterr().err

"""Images that cannot be decoded although their markers are intact: found by decoding (screening, the writers,
verification sets) or, in packed sets, dropped and counted while training (data.bad_images: skip) or named by their
offset (fail). Each refusal is one line, exit 2, no traceback, and no run folder where the run was refused."""
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import distface.data.validate as validate
from distface.data.__main__ import main as data_main
from distface.data.failures import BadRecords
from distface.data.folders import scan_identity_folders
from distface.data.pipeline import eval_images, train_dataset
from distface.data.recordio import RecordIOSource, write_recordio
from distface.eval.pairs import Pair, write_pairs


def garbled_jpeg(rng) -> bytes:
    """A JPEG whose header and end marker are intact and whose entropy-coded body is random bytes."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    body = data.index(b"\xff\xda") + 20  # past the start-of-scan header
    return data[:body] + rng.integers(0, 256, len(data) - body - 2, dtype=np.uint8).tobytes() + data[-2:]


@pytest.fixture
def tree(tmp_path):
    """Two identities of six PNGs; a/g.jpg has a garbled body."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for ident in ("a", "b"):
        (root / ident).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(root / ident / f"{i}.png")
    (root / "a" / "g.jpg").write_bytes(garbled_jpeg(rng))
    return root


@pytest.fixture(autouse=True)
def verdict_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def assert_refused(result, *named):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("distface:") and not line.startswith("distface: warning:")]
    assert len(lines) == 1 and all(name in lines[0] for name in named), result.stderr[-3000:]


def train(out, *args):
    return subprocess.run([sys.executable, "-m", "distface.train", "--config", "distface/configs/debug.yaml",
                           "--set", "data.batch_size=4", "--set", "train.steps=4", "--set", "model.image_size=[40, 36]",
                           "--set", "eval.flip=false", "--set", "train.log_every=2", "--set", "train.eval_every=0",
                           "--set", f"train.out_dir={out}", *args], capture_output=True, text=True, timeout=300)


def test_the_markers_pass_and_the_decode_finds_it(tree):
    garbled = str(tree / "a" / "g.jpg")
    assert validate.image_problem(garbled) is None  # what the screening used to check
    images = scan_identity_folders(tree)
    with pytest.raises(ValueError, match=r"g\.jpg: cannot be decoded: .*data\.bad_images: skip"):
        validate.screen_images(images, "fail")
    kept, bad = validate.screen_images(images, "skip")
    assert [path for path, _ in bad] == [garbled] and len(kept) == 12 and garbled not in kept.paths


def test_verdicts_are_cached_by_size_and_mtime(tree, monkeypatch):
    decoded = []
    real = validate._decode_problems
    monkeypatch.setattr(validate, "_decode_problems", lambda paths, *a, **k: decoded.append(len(paths)) or
                        real(paths, *a, **k))
    paths = scan_identity_folders(tree).paths
    first = validate.screen_paths(paths, "skip")
    second = validate.screen_paths(paths, "skip")
    assert first == second and list(first) == [str(tree / "a" / "g.jpg")]
    assert decoded == [13, 0]  # the second run decodes nothing
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(tree / "a" / "g.jpg", "JPEG")  # repaired: new size
    assert validate.screen_paths(paths, "fail") == {} and decoded[-1] == 1


def test_a_large_set_reports_progress(tree, monkeypatch):
    monkeypatch.setattr(validate, "PROGRESS_FROM", 5)
    calls = []
    validate.screen_paths(scan_identity_folders(tree).paths, "skip", lambda done, total: calls.append((done, total)))
    assert calls[-1] == (13, 13) and [done for done, _ in calls] == list(range(1, 14))


def test_train_on_a_folder_fails_naming_it_or_skips_it(tree, tmp_path):
    args = ("--set", "data.source=folder", "--set", f"data.path={tree}")
    assert_refused(train(tmp_path / "fail", *args), "g.jpg: cannot be decoded")
    assert not (tmp_path / "fail").exists()
    skipped = train(tmp_path / "skip", *args, "--set", "data.bad_images=skip")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "left out 1 of 13 images" in skipped.stderr and "g.jpg" in skipped.stderr


@pytest.fixture
def rec(tree, tmp_path):
    """The tree packed as it is (the library writer, which leaves validation to its callers) and the offset of
    the garbled image's record, from the .idx file."""
    images = scan_identity_folders(tree)
    (tmp_path / "pack").mkdir()
    rec_path, idx, _ = write_recordio(images, tmp_path / "pack" / "train.rec")
    key = images.paths.index(str(tree / "a" / "g.jpg")) + 1  # record 0 is the header
    offsets = dict(line.split("\t") for line in idx.read_text().splitlines())
    return rec_path, int(offsets[str(key)])


def batches(source, bad_records, count=8):
    ds = train_dataset(source, image_size=(40, 36), batch_size=4, seed=3, flip=False, cache=False,
                       bad_records=bad_records)
    return [(images.numpy(), labels.numpy()) for images, labels in ds.take(count)]


def test_a_packed_stream_skips_the_record_deterministically(tree, rec):
    rec_path, offset = rec
    source = RecordIOSource(rec_path)
    first, second = BadRecords("skip"), BadRecords("skip")
    run1, run2 = batches(source, first), batches(source, second)
    for (images1, labels1), (images2, labels2) in zip(run1, run2):
        np.testing.assert_array_equal(images1, images2)
        np.testing.assert_array_equal(labels1, labels2)
    good = eval_images([p for p in scan_identity_folders(tree).paths if not p.endswith("g.jpg")], (40, 36))
    for images, _ in run1:  # every image one of the 12 good ones
        assert all(np.abs(good - image).max(axis=(1, 2, 3)).min() == 0 for image in images)
    # 32 images of a 12-image stream span more than two epochs, each of which met the bad record
    assert first.count >= 2
    lines = first.lines()
    assert len(lines) == first.count and all(f"record at offset {offset}" in line for line in lines)
    assert first.lines() == []  # each named once


def test_a_packed_stream_stops_at_the_record_under_fail(rec):
    source = RecordIOSource(rec[0])
    bad = BadRecords("fail")
    with pytest.raises(tf.errors.OpError):
        batches(source, bad)
    assert bad.count == 1 and f"record at offset {rec[1]}" in bad.failure()


def skipped_records_scalar(run_dir) -> list[float]:
    values = []
    for event_file in (run_dir / "tb").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            values += [float(tf.make_ndarray(v.tensor)) for v in event.summary.value if v.tag == "data/skipped_records"]
    return values


@pytest.mark.parametrize("cache", ["false", "true"])
def test_train_on_a_rec_skips_and_reports_or_fails_naming_the_offset(rec, tmp_path, cache):
    rec_path, offset = rec
    args = ("--set", "data.source=recordio", "--set", f"data.path={rec_path}", "--set", f"data.cache={cache}")
    skipped = train(tmp_path / "skip", *args, "--set", "data.bad_images=skip")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert f"skipped a record that cannot be decoded (data.bad_images: skip): {rec_path}: record at offset " \
           f"{offset}" in skipped.stderr
    assert skipped_records_scalar(tmp_path / "skip")[-1] >= 1
    failed = train(tmp_path / "fail", *args)
    assert_refused(failed, f"{rec_path}: record at offset {offset}", "data.bad_images: fail")


def test_pack_refuses_or_skips_what_cannot_be_decoded(tree, tmp_path, capsys):
    png = (tree / "b" / "0.png").read_bytes()
    (tree / "b" / "t.png").write_bytes(png[:len(png) // 2])  # truncated
    out = tmp_path / "train.rec"
    assert data_main(["pack", str(tree), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "g.jpg: cannot be decoded" in err and "--bad-images skip" in err and "Traceback" not in err
    assert not out.exists()
    assert data_main(["pack", str(tree), str(out), "--quiet", "--bad-images", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "left out 2 images that cannot be decoded" in printed and "t.png: PNG" in printed
    assert len(RecordIOSource(out)) == 12


def test_bin_refuses_or_leaves_out_the_pairs_of_a_bad_image(tree, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
    write_pairs(pairs, [Pair("a", 1, "a", 2), Pair("b", 1, "b", 2), Pair("a", 1, "b", 1), Pair("b", 2, "a", 3)], 1)
    (tree / "a" / "3.png").write_bytes(garbled_jpeg(np.random.default_rng(1)))  # markers of a JPEG, named .png
    out = tmp_path / "set.bin"
    assert data_main(["bin", str(pairs), str(tree), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "3.png: cannot be decoded" in err and "Traceback" not in err and not out.exists()
    assert data_main(["bin", str(pairs), str(tree), str(out), "--quiet", "--bad-images", "skip"]) == 0
    assert "3 pairs" in capsys.readouterr().out


def test_a_bin_with_undecodable_images_names_the_image(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(good, "PNG")
    bin_path = tmp_path / "bad.bin"
    with open(bin_path, "wb") as f:
        pickle.dump(([good.getvalue(), good.getvalue(), b"\x89PNG not really", good.getvalue()], [True, False]), f)
    result = train(tmp_path / "run", "--set", f"eval.bin_sets=[{bin_path}]")
    assert_refused(result, "bad.bin: image 2 (pair 1): cannot be decoded")
    assert not (tmp_path / "run").exists()


def test_a_tfrecord_label_of_the_wrong_type_names_the_feature(tmp_path):
    from distface.data.tfrecord import IMAGE_KEY, LABEL_KEY

    png = io.BytesIO()
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(png, "PNG")
    path = tmp_path / "train.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in (b"0", b"1"):
            feature = {IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png.getvalue()])),
                       LABEL_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[label]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    result = train(tmp_path / "run", "--set", "data.source=tfrecord", "--set", f"data.path={path}")
    assert_refused(result, "train.tfrecord: record at offset 0", f"feature '{LABEL_KEY}'", "bytes_list",
                   "int64_list")
    assert not (tmp_path / "run").exists()

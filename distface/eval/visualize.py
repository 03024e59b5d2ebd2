"""TensorBoard pictures of the embedding space: the projector (3-D PCA/t-SNE of eval embeddings with identity
labels and face thumbnails) and the center-loss paper's 2-D feature plane. Rank 0 calls these (docs/design.md:
rank 0 speaks); nothing here touches a strategy or a model.

The projector only looks inside *runs* (directories holding an event file) and the root --logdir, and reads at
most one `projector_config.pbtxt` and one checkpoint per directory. So each tag gets its own directory,
`<logdir>/projector-<tag>/`, with an (empty) event file that makes it a run:

    projector-<tag>/events.out.tfevents.*      makes TensorBoard list the directory as a run
    projector-<tag>/checkpoint, embedding-<step>.*   the [N, d] tensor, found via the `checkpoint` state file
    projector-<tag>/metadata.tsv, sprite.png   labels and thumbnails, paths relative to the config
    projector-<tag>/projector_config.pbtxt     written last, so what it names already exists
"""
from __future__ import annotations

import colorsys
import io
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw
from tensorboard.plugins import projector
from tensorboard.plugins.projector.metadata import PROJECTOR_FILENAME

MAX_THUMB = 64  # px, the longer side of one sprite thumbnail (never upscaled)
MAX_SPRITE = 8192  # px, the projector's limit on either side of the sprite image
EMBEDDING_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # name of Checkpoint(embedding=v)'s value
_TAG = re.compile(r"[A-Za-z0-9_.-]+")


def projector_dir(logdir: str | Path, tag: str) -> Path:
    """Where write_projector puts `tag`'s files: a run of its own beside the trainer's event files."""
    if not _TAG.fullmatch(tag) or tag in (".", ".."):
        raise ValueError(f"projector tag {tag!r}: use letters, digits, '_', '-' and '.' only")
    return Path(logdir) / f"projector-{tag}"


def write_projector(logdir: str | Path, tag: str, embeddings: np.ndarray, labels: Sequence[str],
                    images: np.ndarray | None = None, step: int = 0) -> Path:
    """Write `embeddings` [N, d] with one label each (and optional images [N, h, w, 3], uint8 or float
    (x - 127.5) / 128) for TensorBoard's projector under `<logdir>/projector-<tag>/`; return that directory.

    A repeated call replaces the previous one (only the latest checkpoint is kept). Safe to point at the logdir
    the scalars go to. The caller samples N: the projector stays responsive up to a few thousand points.
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"projector {tag}: embeddings must be [N, d] with N > 0, got shape {embeddings.shape}")
    if len(labels) != len(embeddings):
        raise ValueError(f"projector {tag}: {len(labels)} labels for {len(embeddings)} embeddings")
    if images is not None and len(images) != len(embeddings):
        raise ValueError(f"projector {tag}: {len(images)} images for {len(embeddings)} embeddings")
    out = projector_dir(logdir, tag)
    sprite = None if images is None else sprite_image(images)  # validates the images before anything is written
    out.mkdir(parents=True, exist_ok=True)

    if not any(out.glob("events.out.tfevents.*")):
        tf.summary.create_file_writer(str(out)).close()
    # The manager writes embedding-<step> and a `checkpoint` state file with a relative path (so the run dir
    # can be copied elsewhere), and deletes the previous call's checkpoint.
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings, trainable=False))
    tf.train.CheckpointManager(checkpoint, str(out), max_to_keep=1, checkpoint_name="embedding").save(
        checkpoint_number=step)

    config = projector.ProjectorConfig()
    info = config.embeddings.add()
    info.tensor_name = EMBEDDING_TENSOR
    info.metadata_path = "metadata.tsv"  # one column: no header line, as the projector expects
    _write_atomic(out / info.metadata_path, "".join(f"{_tsv_field(label)}\n" for label in labels).encode())
    if sprite is not None:
        pixels, (thumb_h, thumb_w) = sprite
        info.sprite.image_path = "sprite.png"
        info.sprite.single_image_dim.extend([thumb_w, thumb_h])  # the projector reads [width, height]
        _write_atomic(out / info.sprite.image_path, _png(pixels))
    with tempfile.TemporaryDirectory(dir=out) as staging:
        projector.visualize_embeddings(staging, config)
        os.replace(os.path.join(staging, PROJECTOR_FILENAME), out / PROJECTOR_FILENAME)
    return out


def sprite_image(images: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile images [N, h, w, 3] (uint8, or float (x - 127.5) / 128) row by row from the top left into a square
    grid of ceil(sqrt(N)) thumbnails a side -> (uint8 sprite, (thumb_h, thumb_w)).

    Thumbnails keep the aspect ratio, are area-averaged down to at most MAX_THUMB px on the longer side (less
    when the grid would pass MAX_SPRITE) and are never enlarged; unused cells stay black.
    """
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"sprite: images must be [N, h, w, 3], got shape {images.shape}")
    n, h, w, _ = images.shape
    grid = math.ceil(math.sqrt(n))
    longest = min(max(h, w), MAX_THUMB, MAX_SPRITE // grid)
    if longest < 1:
        raise ValueError(f"sprite: {n} images do not fit a {MAX_SPRITE} px sprite; pass fewer")
    scale = longest / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    sprite = np.zeros((grid * th, grid * tw, 3), np.uint8)
    for i, image in enumerate(images):
        thumb = np.asarray(Image.fromarray(image).resize((tw, th), Image.Resampling.BOX))
        row, col = divmod(i, grid)
        sprite[row * th:(row + 1) * th, col * tw:(col + 1) * tw] = thumb
    return sprite, (th, tw)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 images unchanged; float ones undo the pipeline's (x - 127.5) / 128."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images.astype(np.float64) * 128.0 + 127.5), 0, 255).astype(np.uint8)


# Feature plane: white background, grey axes through the origin, one disc per point.
BACKGROUND = (255, 255, 255)
AXIS = (150, 150, 150)
PLANE_MARGIN = 0.1  # the farthest point sits this fraction of the half-width inside the border


def identity_colour(label: int) -> tuple[int, int, int]:
    """A saturated colour fixed per identity, the same at every step: hues step by the golden ratio, so
    neighbouring labels differ most and no two labels share a hue."""
    hue = (int(label) * 0.6180339887498949) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.85))


def feature_plane_image(features: np.ndarray, labels: np.ndarray, size: int = 512) -> np.ndarray:
    """The center-loss paper's picture of 2-D features -> uint8 [size, size, 3] for tf.summary.image.

    Both axes share one scale (angles stay true), the origin is the image centre c = (size - 1) / 2 and a
    feature (x, y) lands at column round(c + c * x / r), row round(c - c * y / r) with r = (1 + PLANE_MARGIN) *
    max |feature| (1 when all are 0). Points are discs in identity_colour(label), drawn in input order.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if features.ndim != 2 or features.shape[1] != 2:
        raise ValueError(f"feature plane: features must be [N, 2], got shape {features.shape}")
    if labels.shape != (len(features),):
        raise ValueError(f"feature plane: labels must be [{len(features)}], got shape {labels.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("feature plane: features hold NaN or Inf")
    if size < 16:
        raise ValueError(f"feature plane: size {size} is too small (at least 16 px)")
    c = (size - 1) / 2
    extent = (1 + PLANE_MARGIN) * float(np.max(np.abs(features), initial=0.0)) or 1.0
    cols = np.rint(c + c * features[:, 0] / extent).astype(int)
    rows = np.rint(c - c * features[:, 1] / extent).astype(int)
    origin = round(c)  # the same rounding as a feature at (0, 0)

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.line([(0, origin), (size - 1, origin)], fill=AXIS)
    draw.line([(origin, 0), (origin, size - 1)], fill=AXIS)
    radius = max(2, size // 128)
    for x, y, label in zip(cols, rows, labels):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=identity_colour(label))
    return np.asarray(image)


def log_image(writer: tf.summary.SummaryWriter, tag: str, image: np.ndarray, step: int) -> None:
    """Write one uint8 [h, w, 3] image (a feature plane) as an image summary."""
    with writer.as_default():
        tf.summary.image(tag, image[None], step=step)
    writer.flush()


def _tsv_field(label) -> str:
    # A tab or newline inside a label would shift every later row against its point.
    return re.sub(r"[\t\r\n]", " ", str(label))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """TensorBoard may read while we write: it sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

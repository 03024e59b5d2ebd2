"""Training sets by data.source: SOURCES[name](cfg) -> TrainingSet.

Nothing here prints (the chief reports TrainingSet.summary() and resize_warning(): rank 0 speaks), and importing
this module is cheap, as the config check of data.source reads SOURCES: the readers (and TensorFlow) are imported
by the builders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from distface.config import Config, ConfigError, InputError

if TYPE_CHECKING:
    from distface.data.folders import ImageList


@dataclass(frozen=True, eq=False)  # eq=False: sources hold numpy arrays, which == compares ambiguously
class TrainingSet:
    """What a run trains on. source: for the distface.data.batches factories; num_images: in source;
    left_out: the broken files left out of it (data.bad_images: skip), as (path, problem)."""

    source: Any
    num_classes: int
    num_images: int
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str | None:
        """One line naming the files left out (the first three), or None when none were."""
        if not self.left_out:
            return None
        bad, shown = len(self.left_out), "; ".join(f"{path}: {problem}" for path, problem in self.left_out[:3])
        return (f"left out {bad} of {self.num_images + bad} images that are not complete image files "
                f"(data.bad_images: skip): {shown}{' ...' if bad > 3 else ''}")

    def resize_warning(self, image_size) -> str | None:
        """One line when the set's images (a few, spread over it: distface.data.aspect) are shaped unlike
        model.image_size, so resizing them stretches the faces; None when they are not. Decodes those few."""
        from distface.data.aspect import source_stretched

        found = source_stretched(self.source, image_size)
        if found is None:
            return None
        where, (h, w) = found
        to_h, to_w = image_size
        return (f"warning: images of {h}x{w} (such as {where}) are resized to model.image_size {to_h}x{to_w}, which "
                "changes their aspect ratio; align or crop them to that shape, or set model.image_size")


def train_source(cfg: Config, progress: Callable[[int, int], None] | None = None) -> TrainingSet:
    """The training set cfg.data describes, image files screened per data.bad_images (progress(done, total)
    follows the decoding of a large set); an unknown data.source raises ConfigError listing the known ones."""
    build = SOURCES.get(cfg.data.source)
    if build is None:
        raise ConfigError(f"data.source: unknown source {cfg.data.source!r} (known: {', '.join(sorted(SOURCES))})")
    training_set = _screened(cfg, build(cfg), progress)
    if training_set.num_classes < 2:  # one class: the softmax is 1 whatever the features, nothing is learnt
        where = f" {cfg.data.path}" if cfg.data.path else ""
        raise InputError(f"data.source: the {cfg.data.source} set{where} holds {training_set.num_classes} "
                         "identity; training needs at least 2")
    return training_set


def _screened(cfg: Config, training_set: TrainingSet, progress) -> TrainingSet:
    """A set of image files less those that cannot be decoded, per data.bad_images (fail raises naming the
    first); other sets as they are (packed sets are checked as they are read: distface.data.failures)."""
    from distface.data.folders import ImageList

    images = training_set.source
    if not isinstance(images, ImageList):
        return training_set
    from distface.data.validate import screen_images

    kept, bad = screen_images(images, cfg.data.bad_images, progress)
    return TrainingSet(kept, images.num_classes, len(kept), bad)


def _images(images: ImageList) -> TrainingSet:
    return TrainingSet(images, images.num_classes, len(images))


def _orl(cfg: Config) -> TrainingSet:
    from distface.data.orl import orl_split

    return _images(orl_split(cfg.data.train_identities))


def _folder(cfg: Config) -> TrainingSet:
    from distface.data.folders import scan_identity_folders

    return _images(scan_identity_folders(cfg.data.path))


def _recordio(cfg: Config) -> TrainingSet:
    from distface.data.recordio import RecordIOSource

    return _packed(RecordIOSource(cfg.data.path))


def _tfrecord(cfg: Config) -> TrainingSet:
    from distface.data.tfrecord import TFRecordSource

    return _packed(TFRecordSource(cfg.data.path))


def _packed(records) -> TrainingSet:
    return TrainingSet(records, records.num_classes, len(records))


def _synthetic(cfg: Config) -> TrainingSet:
    from distface.data.synthetic import synthetic_images

    d = cfg.data
    images, labels = synthetic_images(d.synthetic_identities, d.synthetic_images_per_identity,
                                      tuple(cfg.model.image_size), seed=cfg.train.seed)
    return TrainingSet((images, labels), d.synthetic_identities, len(labels))


def _mnist(cfg: Config) -> TrainingSet:
    from distface.data.mnist import MNIST_CLASSES, train_mnist

    images, labels = train_mnist(cfg.data.flip)
    return TrainingSet((images, labels), MNIST_CLASSES, len(labels))


SOURCES: dict[str, Callable[[Config], TrainingSet]] = {
    "orl": _orl, "folder": _folder, "recordio": _recordio, "tfrecord": _tfrecord, "synthetic": _synthetic,
    "mnist": _mnist}

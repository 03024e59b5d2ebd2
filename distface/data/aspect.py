"""Images shaped unlike the model's input: every image is resized to model.image_size (bilinear, no letterbox),
which stretches a face whose aspect ratio differs. Found from a few decoded samples before training or embedding,
so a user is told once instead of learning on squashed faces; no pass over the set."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# ORL's 112x92 photos on a 112x96 net differ by 4 % (2 px a side), a stretch no one sees; a 112x112 crop on a
# 112x96 net (17 %) or a 4:3 photo is what the warning is for.
ASPECT_TOLERANCE = 0.05
SAMPLE = 3  # images looked at, spread over the set: the first, the middle and the last


def stretched(size: Sequence[int], image_size: Sequence[int]) -> bool:
    """Whether resizing an (h, w) image to image_size changes its aspect ratio by more than ASPECT_TOLERANCE."""
    (h, w), (to_h, to_w) = size, image_size
    return abs((w / h) / (to_w / to_h) - 1.0) > ASPECT_TOLERANCE


def not_a_crop(size: Sequence[int], image_size: Sequence[int]) -> bool:
    """Whether an (h, w) image does not look like a face crop for a model of image_size: stretched by resizing, or
    more than twice its size both ways (a photo: aligned crops are made at the model's size)."""
    (h, w), (to_h, to_w) = size, image_size
    return stretched(size, image_size) or min(h / to_h, w / to_w) > 2.0


def first_stretched(items: Sequence, decode: Callable[[Any], Any], image_size: Sequence[int],
                    name: Callable[[Any], str] = str, count: int = SAMPLE,
                    unlike: Callable[[Sequence[int], Sequence[int]], bool] = stretched
                    ) -> tuple[str, tuple[int, int]] | None:
    """(name, (h, w)) of the first of `count` items spread evenly over items (the first included) that
    unlike(size, image_size) picks (by default: resizing distorts it), or None. decode(item) -> [h, w, ...] image;
    an item it cannot decode is passed over (screening, data.bad_images or the command's own decoding names it)."""
    import tensorflow as tf

    for index in sorted(set(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int).tolist())):
        try:
            h, w = (int(side) for side in np.shape(decode(items[index]))[:2])
        except (tf.errors.OpError, OSError, ValueError):
            continue
        if unlike((h, w), image_size):
            return name(items[index]), (h, w)
    return None


def files_stretched(paths: Sequence[str], image_size: Sequence[int], unlike=stretched
                    ) -> tuple[str, tuple[int, int]] | None:
    """first_stretched of image files, decoded as training and evaluation decode them."""
    import tensorflow as tf

    from distface.data.pipeline import decode_image

    return first_stretched(paths, lambda path: decode_image(tf.constant(path)), image_size, unlike=unlike)


def source_stretched(source, image_size: Sequence[int]) -> tuple[str, tuple[int, int]] | None:
    """first_stretched of a training source (distface.data.pipeline.Source): image files, a packed set's records
    (named by file and offset) or in-memory images (one shape)."""
    import tensorflow as tf

    from distface.data.folders import ImageList
    from distface.data.pipeline import decode_image_bytes

    if isinstance(source, ImageList):
        return files_stretched(source.paths, image_size)
    if isinstance(source, tuple):
        images = np.asarray(source[0])
        return first_stretched(images[:1], lambda image: image, image_size, lambda _: "image 0 in memory")
    keys = source.keys()[0]

    def decode(key):
        record = source.read(tf.constant([key]))[0]
        return decode_image_bytes(source.parse(record, tf.constant(-1, tf.int32))[0])

    return first_stretched(keys, decode, image_size, lambda key: source.describe(int(key)))

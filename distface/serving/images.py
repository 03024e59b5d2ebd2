"""Image files for embed and verify: listed from files and folders, decoded and preprocessed as in evaluation,
optionally aligned onto the ArcFace template first."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from distface.data.folders import IMAGE_EXTENSIONS, natural_key

CHUNK = 256  # images decoded at a time: the progress granularity, and a bound on the images held in memory


def image_paths(inputs: Sequence[str | Path]) -> list[str]:
    """Each input is an image file or a folder (searched recursively, in natural order)."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted((p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(item).parts)),
                           key=lambda p: natural_key(str(p)))
            if not found:
                raise ValueError(f"{item}: no images in this folder (extensions {', '.join(IMAGE_EXTENSIONS)})")
            paths += map(str, found)
        elif item.is_file():
            paths.append(str(item))
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    return paths


def unaligned_warning(paths: Sequence[str], image_size: Sequence[int], align: bool) -> str | None:
    """One line when an input does not look aligned to the model and --align was not given: the first of a few
    (distface.data.aspect.not_a_crop) whose aspect ratio is not the model's, or that is more than twice its size
    both ways. An aligned crop has its template's shape, which is the model's (template_size_for), at about its
    size; a photo or a crop for another net shows itself this way."""
    if align:
        return None
    from distface.data.aspect import files_stretched, not_a_crop, stretched

    found = files_stretched(paths, image_size, unlike=not_a_crop)
    if found is None:
        return None
    path, (h, w) = found
    to_h, to_w = image_size
    how = "shaped unlike" if stretched((h, w), image_size) else "far larger than"
    return (f"warning: {path} is {h}x{w}, {how} the model's {to_h}x{to_w} input: it does not look aligned "
            f"(--align detects and aligns the faces); it is resized to {to_h}x{to_w}"
            + (", which stretches the face" if how == "shaped unlike" else ""))


def image_chunks(paths: Sequence[str], image_size: Sequence[int], align: bool = False
                 ) -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
    """Per CHUNK of paths, in order: (float32 images [n, h, w, 3] as evaluation preprocesses them, their paths, the
    paths with no face).

    align: detect the largest face, warp it onto the template the model's aspect wants (112x112, or 112x96 for
    narrower inputs), then resize; images without a face are left out and listed.
    """
    from distface.data.pipeline import eval_images

    detector = None
    if align:
        from distface.align.detector import FaceDetector

        detector = FaceDetector()
    for start in range(0, len(paths), CHUNK):
        chunk = list(paths[start:start + CHUNK])
        if detector is None:
            yield eval_images(chunk, image_size), chunk, []
        else:
            images, found = _aligned(chunk, image_size, detector)
            yield images, [p for p, ok in zip(chunk, found) if ok], [p for p, ok in zip(chunk, found) if not ok]


def _read(path: str) -> np.ndarray:
    """uint8 [H, W, 3] as evaluation decodes it; an unreadable file raises ValueError naming it."""
    import tensorflow as tf

    from distface.align.folder import decode_error
    from distface.data.pipeline import decode_image

    try:
        return decode_image(tf.constant(path)).numpy()
    except tf.errors.OpError as err:
        raise ValueError(f"{path}: cannot be decoded: {decode_error(err)}") from None


def _aligned(paths: list[str], image_size, detector) -> tuple[np.ndarray, list[bool]]:
    import tensorflow as tf

    from distface.align.folder import align_faces
    from distface.align.similarity import template_size_for
    from distface.data.pipeline import preprocess

    images, found = [], []
    for path in paths:
        image = _read(path)
        crops = align_faces(image, detector, template_size_for(image_size))
        found.append(bool(crops))
        if crops:
            images.append(preprocess(tf.constant(crops[0]), image_size, training=False).numpy())
    h, w = image_size
    return (np.stack(images) if images else np.zeros((0, h, w, 3), np.float32)), found

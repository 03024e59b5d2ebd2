"""Learnable fake faces: a smooth random template per identity, plus per-image shift, brightness, noise."""

from __future__ import annotations

import numpy as np

from distface.config import InputError

_GRID = (8, 8)          # control points of a template; few points make it smooth
_MAX_SHIFT = 4          # pixels, each direction
_MAX_BRIGHTNESS = 15.0  # grey levels, each direction
_NOISE_STD = 12.0       # grey levels
_CHUNK = 64             # identities rendered at once, to bound float32 memory for large sets


def _interpolation_matrix(size: int, points: int) -> np.ndarray:
    """[size, points] weights that linearly interpolate `points` evenly spaced samples to `size` pixels."""
    t = np.linspace(0.0, points - 1.0, size)
    lo = np.minimum(np.floor(t).astype(int), points - 2)
    frac = t - lo
    m = np.zeros((size, points))
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m.astype(np.float32)


def synthetic_images(num_identities: int, images_per_identity: int, image_size: tuple[int, int] = (112, 96),
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 [N, h, w, 3], int32 [N]) with N = num_identities * images_per_identity, grouped by label.

    Templates are left-right symmetric, like faces, so horizontal-flip augmentation keeps the identity.
    The same arguments always give the same arrays.
    """
    if num_identities < 1 or images_per_identity < 1:
        raise InputError(f"synthetic_images needs at least 1 identity and 1 image each, "
                         f"got {num_identities} x {images_per_identity}")
    h, w = image_size
    rng = np.random.default_rng(seed)
    gh, gw = _GRID
    half = rng.uniform(0.0, 255.0, (num_identities, gh, gw // 2, 3)).astype(np.float32)
    grids = np.concatenate([half, half[:, :, ::-1]], axis=2)
    # Templates are rendered with a margin so every shifted crop stays inside.
    rows = _interpolation_matrix(h + 2 * _MAX_SHIFT, gh)
    cols = _interpolation_matrix(w + 2 * _MAX_SHIFT, gw)

    labels = np.repeat(np.arange(num_identities, dtype=np.int32), images_per_identity)
    n = labels.size
    dy, dx = rng.integers(0, 2 * _MAX_SHIFT + 1, size=(2, n))
    brightness = rng.uniform(-_MAX_BRIGHTNESS, _MAX_BRIGHTNESS, size=(n, 1, 1, 1)).astype(np.float32)
    images = np.empty((n, h, w, 3), np.uint8)
    for start in range(0, num_identities, _CHUNK):
        ids = slice(start, min(start + _CHUNK, num_identities))
        templates = np.einsum("yi,nijc,xj->nyxc", rows, grids[ids], cols, optimize=True)
        sel = slice(ids.start * images_per_identity, ids.stop * images_per_identity)
        crop = np.stack([templates[label - start, y:y + h, x:x + w]
                         for label, y, x in zip(labels[sel], dy[sel], dx[sel])])
        # Grey (channel-shared) noise: a third of the random numbers, which dominate the run time.
        crop += brightness[sel] + _NOISE_STD * rng.standard_normal(crop.shape[:3] + (1,), dtype=np.float32)
        images[sel] = np.clip(np.rint(crop), 0, 255)
    return images, labels

"""The ArcFace landmark templates, the least-squares similarity transform onto them (Umeyama) and the warp.

Coordinates are (x, y) in pixels with pixel centres at integers, as OpenCV's warpAffine and insightface's
norm_crop use them, so the templates mean what they mean there.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# insightface's arcface_dst: left eye, right eye, nose tip, left and right mouth corner ("left" = image left)
# of the 112x112 crops every ArcFace model (and MS1M / Glint360K as distributed) is trained on.
ARCFACE_112X112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                            [41.5493, 92.3655], [70.7299, 92.2041]])
# SphereFace's 112x96 crops: the same face, 8 px less on each side.
TEMPLATES = {(112, 112): ARCFACE_112X112, (112, 96): ARCFACE_112X112 - [8.0, 0.0]}


def template(size: Sequence[int]) -> np.ndarray:
    """The [5, 2] template of an aligned crop of size (h, w): 112x112 or 112x96."""
    size = tuple(int(s) for s in size)
    if size not in TEMPLATES:
        raise ValueError(f"aligned size must be one of {', '.join(f'{h}x{w}' for h, w in TEMPLATES)}, got "
                         f"{size[0]}x{size[1]}")
    return TEMPLATES[size]


def template_size_for(image_size: Sequence[int]) -> tuple[int, int]:
    """The aligned crop a model of input (h, w) wants: SphereFace's 112x96 when narrower than tall, else 112x112."""
    h, w = image_size
    return (112, 96) if w < h else (112, 112)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity (rotation, uniform scale, translation; no reflection) that maps src [n, 2] onto dst [n, 2]
    with the least sum of squared errors, as a 2x3 matrix M: dst ~ M[:, :2] @ p + M[:, 2].

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point patterns".
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"umeyama: need two [n, 2] point sets, n >= 2, got shapes {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    a, b = src - mu_src, dst - mu_dst
    var_src = np.mean(np.sum(a * a, axis=1))
    if var_src == 0:
        raise ValueError("umeyama: the source points coincide")
    u, d, vt = np.linalg.svd(b.T @ a / len(src))
    s = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # -1 would be a reflection
    rotation = u @ s @ vt
    scale = np.trace(np.diag(d) @ s) / var_src
    return np.hstack([scale * rotation, (mu_dst - scale * rotation @ mu_src)[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [n, 2] mapped by a 2x3 matrix."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 image [H, W, C] -> the (h, w) image whose pixel q shows the source at M^-1 q (bilinear, black outside)."""
    h, w = size
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    source = apply(inverse, np.stack([xs.ravel(), ys.ravel()], axis=1))
    x, y = source[:, 0], source[:, 1]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    image = np.asarray(image)
    rows, cols = image.shape[:2]

    def at(yy, xx):
        inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
        values = image[np.clip(yy, 0, rows - 1), np.clip(xx, 0, cols - 1)].astype(np.float64)
        return values * inside[:, None]

    out = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
           + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(h, w, image.shape[2])

"""Curve pictures (uint8 [H, W, 3], for tf.summary.image or a PNG): the verification ROC and the identification CMC.

A few lines of PIL drawing, so evaluation needs no plotting library.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from distface.eval.identification import IdentificationResult
from distface.eval.verification import VerificationResult

SIZE = (480, 640)  # h, w
MARGINS = (36, 24, 56, 72)  # top, right, bottom, left: room for the title, tick labels and axis labels
CURVE = (31, 119, 180)
POINT = (214, 39, 40)
GRID = (225, 225, 225)
INK = (0, 0, 0)


@dataclass(frozen=True)
class Axes:
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    log_x: bool = False

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """(column, row) of data point (x, y) inside the plot area."""
        top, right, bottom, left = MARGINS
        h, w = SIZE
        scale = math.log10 if self.log_x else float
        x0, x1 = (scale(v) for v in self.x_range)
        y0, y1 = self.y_range
        return (left + (scale(x) - x0) / (x1 - x0) * (w - left - right - 1),
                top + (y1 - y) / (y1 - y0) * (h - top - bottom - 1))


def curve_image(axes: Axes, x: Sequence[float], y: Sequence[float], x_ticks: Sequence[float],
                y_ticks: Sequence[float], x_label: str, y_label: str, title: str,
                point: tuple[float, float] | None = None) -> np.ndarray:
    """One polyline through (x, y) on a white, gridded plot; `point` is marked with a red disc."""
    h, w = SIZE
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    (left, top), (right, bottom) = axes.to_pixel(axes.x_range[0], axes.y_range[1]), \
        axes.to_pixel(axes.x_range[1], axes.y_range[0])
    for tick in x_ticks:
        col = axes.to_pixel(tick, 0)[0]
        draw.line([(col, top), (col, bottom)], fill=GRID)
        draw.text((col, bottom + 6), f"{tick:g}", fill=INK, anchor="mt")
    for tick in y_ticks:
        row = axes.to_pixel(axes.x_range[0], tick)[1]
        draw.line([(left, row), (right, row)], fill=GRID)
        draw.text((left - 6, row), f"{tick:g}", fill=INK, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text(((left + right) / 2, h - 8), x_label, fill=INK, anchor="md")
    draw.text((8, (top + bottom) / 2), y_label, fill=INK, anchor="lm")
    draw.text(((left + right) / 2, 10), title, fill=INK, anchor="mt")
    draw.line([axes.to_pixel(a, b) for a, b in zip(x, y)], fill=CURVE, width=2)
    if point is not None:
        col, row = axes.to_pixel(*point)
        draw.ellipse([col - 4, row - 4, col + 4, row + 4], fill=POINT)
    return np.asarray(image)


def roc_curve_image(result: VerificationResult, title: str = "ROC") -> np.ndarray:
    """TAR against FAR (log scale, 1e-4 .. 1) at the result's ROC points; the VAL operating point in red."""
    if not result.roc_far:
        raise ValueError("ROC image: this VerificationResult holds no ROC points")
    axes = Axes((result.roc_far[0], result.roc_far[-1]), (0.0, 1.0), log_x=True)
    decades = [10.0 ** k for k in range(round(math.log10(result.roc_far[0])), 1)]
    point = (min(max(result.far, result.roc_far[0]), 1.0), result.val) if math.isfinite(result.val) else None
    return curve_image(axes, result.roc_far, result.roc_tar, decades, np.linspace(0, 1, 6),
                       "false accept rate (FAR)", "TAR", f"{title}: VAL {100 * result.val:.2f} % @ FAR "
                       f"{100 * result.far:.2f} %, AUC {result.auc:.4f}", point)


def cmc_curve_image(result: IdentificationResult, title: str = "CMC") -> np.ndarray:
    """Identification rate against rank (1 .. identities), closed set."""
    ranks = np.arange(1, len(result.cmc) + 1)
    axes = Axes((1.0, float(max(len(ranks), 2))), (0.0, 1.0))
    step = max(1, len(ranks) // 10)
    return curve_image(axes, ranks, result.cmc, ranks[::step], np.linspace(0, 1, 6), "rank", "rate",
                       f"{title}: rank-1 {100 * result.rank1:.2f} %, rank-5 {100 * result.rank5:.2f} %")


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write the picture as a PNG (temporary name, then renamed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path

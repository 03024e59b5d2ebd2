"""Faces and their 5 landmarks, from MTCNN (the `mtcnn` package: its weights ship inside its 1.9 MB wheel).

MTCNN is the detector insightface aligned MS1M with, and its 5 points are exactly the template's (eye centres,
nose tip, mouth corners), so no landmark model has to be mapped onto them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INSTALL_HINT = "face alignment needs the align extra: pip install 'distface[align]'"


@dataclass(frozen=True, eq=False)
class Face:
    box: np.ndarray  # [x1, y1, x2, y2]
    score: float
    landmarks: np.ndarray  # [5, 2] (x, y): left eye, right eye, nose, left and right mouth corner (image left)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


class FaceDetector:
    """detector(uint8 image [H, W, 3]) -> its faces, largest first."""

    def __init__(self, min_face_size: int = 20):
        try:
            from mtcnn import MTCNN
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self._mtcnn = MTCNN()
        self.min_face_size = min_face_size

    def __call__(self, image: np.ndarray) -> list[Face]:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"face detector: need a uint8 [H, W, 3] image, got {image.dtype}{list(image.shape)}")
        # Rows: [image id, x1, y1, x2, y2, score, the 5 landmarks' x, their y]; no face gives no rows.
        rows = np.asarray(self._mtcnn.detect_faces(image, box_format="xyxy", output_type="numpy",
                                                   min_face_size=self.min_face_size), np.float64)
        faces = [Face(r[1:5], float(r[5]), r[6:16].reshape(2, 5).T) for r in rows.reshape(-1, 16)]
        return sorted(faces, key=lambda f: -f.area)

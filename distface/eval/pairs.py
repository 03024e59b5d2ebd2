"""Verification pairs in LFW's pairs.txt format: read, write, generate, and find their images.

Format: a header ``<folds> <n>`` (LFW: ``10 300``) or ``<n>`` alone (one fold, as pairsDevTest.txt),
then per fold n matched lines ``name idx1 idx2`` followed by n mismatched lines
``name1 idx1 name2 idx2``. Fields are separated by tabs or spaces; idx are 1-based image numbers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distface.config import InputError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "pgm", "bmp")


@dataclass(frozen=True)
class Pair:
    name1: str
    idx1: int
    name2: str
    idx2: int

    def __post_init__(self):
        for field in ("name1", "name2"):
            name = getattr(self, field)
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise InputError(f"{field} must be a non-empty name without whitespace, got {name!r}")
        for field in ("idx1", "idx2"):
            idx = getattr(self, field)
            if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or idx < 1:
                raise InputError(f"{field} must be a positive image number, got {idx!r}")
            object.__setattr__(self, field, int(idx))  # numpy integers become plain ints

    @property
    def issame(self) -> bool:
        return self.name1 == self.name2


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs of a pairs.txt file, in file order; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    lines = [(no, line.split()) for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    lines = [(no, fields) for no, fields in lines if fields]
    if not lines:
        raise InputError(f"{path}: empty pairs file")
    (header_no, header), body = lines[0], lines[1:]
    if len(header) not in (1, 2) or not all(f.isdigit() and int(f) > 0 for f in header):
        raise InputError(
            f"{path}:{header_no}: header must be '<folds> <pairs per fold>' or '<pairs>', got {' '.join(header)!r}"
        )
    num_folds, per_fold = (1, int(header[0])) if len(header) == 1 else map(int, header)

    pairs = []
    for no, fields in body:
        if len(fields) not in (3, 4):
            raise InputError(f"{path}:{no}: expected 3 or 4 fields, got {len(fields)}")
        name1, idx1, name2, idx2 = fields if len(fields) == 4 else (fields[0], fields[1], fields[0], fields[2])
        try:
            pairs.append(Pair(name1, _parse_index(idx1), name2, _parse_index(idx2)))
        except ValueError as e:
            raise InputError(f"{path}:{no}: {e}") from None

    expected = 2 * num_folds * per_fold
    if len(pairs) != expected:
        raise InputError(
            f"{path}: header promises {num_folds} folds x ({per_fold} same + {per_fold} different)"
            f" = {expected} pairs, found {len(pairs)}"
        )
    bad = _first_misplaced(pairs, per_fold)
    if bad is not None:
        raise InputError(f"{path}:{body[bad][0]}: {_misplaced_message(bad, pairs[bad], per_fold)}")
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Sequence[Pair], num_folds: int) -> None:
    """Write pairs, already in fold order (each fold n same then n different), atomically."""
    pairs = list(pairs)
    if num_folds < 1 or not pairs or len(pairs) % (2 * num_folds):
        raise InputError(f"{len(pairs)} pairs cannot form {num_folds} folds of n same + n different pairs")
    per_fold = len(pairs) // (2 * num_folds)
    bad = _first_misplaced(pairs, per_fold)
    if bad is not None:
        raise InputError(f"pair {bad + 1}: {_misplaced_message(bad, pairs[bad], per_fold)}")

    lines = [f"{num_folds}\t{per_fold}"]
    for p in pairs:
        lines.append(f"{p.name1}\t{p.idx1}\t{p.idx2}" if p.issame else f"{p.name1}\t{p.idx1}\t{p.name2}\t{p.idx2}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)  # readers never see a half-written file
    except BaseException:
        os.unlink(tmp)
        raise


def make_pairs(images_per_identity: Mapping[str, int], seed: int = 0, num_folds: int = 10) -> list[Pair]:
    """Every same-identity pair plus as many sampled different-identity pairs, in LFW fold order.

    Same pairs: every (i, j), i < j, of every identity. Different pairs: drawn uniformly without
    replacement from all unordered pairs of images of different identities. Both lists are shuffled
    with ``np.random.default_rng(seed)`` and dealt into num_folds folds of n same then n different,
    n = (number of same pairs) // num_folds: when that does not divide, the remaining same pairs
    (a seeded random choice) are dropped. Identities are taken in sorted order, so the result depends
    only on the mapping's contents and the seed.
    """
    names = sorted(images_per_identity)
    for name in names:
        c = images_per_identity[name]
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
            raise InputError(f"image count of {name!r} must be an integer >= 0, got {c!r}")
    counts = np.array([images_per_identity[n] for n in names], dtype=np.int64)
    same = [Pair(n, i, n, j) for n, c in zip(names, counts) for i in range(1, c + 1) for j in range(i + 1, c + 1)]
    per_fold = len(same) // num_folds if num_folds >= 1 else 0
    if per_fold == 0:
        raise InputError(f"{len(same)} same-identity pairs cannot fill {num_folds} folds")
    rng = np.random.default_rng(seed)
    same = [same[k] for k in rng.permutation(len(same))[: per_fold * num_folds]]
    diff = _sample_different(names, counts, per_fold * num_folds, rng)
    folds = []
    for f in range(num_folds):
        part = slice(f * per_fold, (f + 1) * per_fold)
        folds += same[part] + diff[part]
    return folds


def resolve_image(root: str | os.PathLike, name: str, idx: int) -> Path:
    """Path of image idx of identity name: LFW ``name/name_0001.jpg``, else ORL ``name/1.pgm``."""
    folder = Path(root) / name
    for stem in (f"{name}_{idx:04d}", str(idx)):
        for ext in IMAGE_EXTENSIONS:
            path = folder / f"{stem}.{ext}"
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"no image {idx} of {name!r} under {root}: tried {name}/{name}_{idx:04d}.* and {name}/{idx}.*"
        f" with extensions {', '.join(IMAGE_EXTENSIONS)}"
    )


def pair_image_paths(root: str | os.PathLike, pairs: Iterable[Pair]) -> tuple[list[str], list[str], np.ndarray]:
    """Image paths of both sides of every pair, and issame as a bool array."""
    paths1, paths2, issame = [], [], []
    for k, p in enumerate(pairs, 1):
        try:
            paths1.append(str(resolve_image(root, p.name1, p.idx1)))
            paths2.append(str(resolve_image(root, p.name2, p.idx2)))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"pair {k}: {e}") from None
        issame.append(p.issame)
    return paths1, paths2, np.array(issame, dtype=bool)


def _parse_index(text: str) -> int:
    if not text.isdigit():
        raise InputError(f"image number {text!r} is not a positive integer")
    return int(text)


def _first_misplaced(pairs: Sequence[Pair], per_fold: int) -> int | None:
    """Index of the first pair out of fold order (n same then n different per fold), or None."""
    for k, p in enumerate(pairs):
        if p.issame != (k % (2 * per_fold) < per_fold):
            return k
    return None


def _misplaced_message(k: int, pair: Pair, per_fold: int) -> str:
    fold, slot = divmod(k, 2 * per_fold)
    want = "same" if slot < per_fold else "different"
    got = "same" if pair.issame else "different"
    return (
        f"fold {fold + 1} expects a {want}-identity pair here, got a {got} one"
        f" (each fold is {per_fold} same then {per_fold} different)"
    )


def _sample_different(names: list[str], counts: np.ndarray, k: int, rng: np.random.Generator) -> list[Pair]:
    """k distinct unordered pairs of images of different identities, uniformly, in random order.

    Images are numbered globally with identities in contiguous blocks. Image g pairs with every image
    after its own block, so all different pairs are enumerated by (g, offset) and a drawn integer is
    decoded without ever listing them: O(k log T) for T images.
    """
    ends = np.cumsum(counts)
    total_images = int(ends[-1]) if len(ends) else 0
    ident = np.repeat(np.arange(len(names)), counts)
    partners = total_images - ends[ident]  # images after g's block
    first = np.concatenate([[0], np.cumsum(partners)])
    if k > first[-1]:
        raise InputError(f"need {k} different-identity pairs but only {int(first[-1])} exist")
    drawn = rng.choice(int(first[-1]), size=k, replace=False)  # shuffled
    a = np.searchsorted(first, drawn, side="right") - 1
    b = ends[ident[a]] + (drawn - first[a])
    starts = ends - counts
    return [
        Pair(names[ia], int(x - starts[ia] + 1), names[ib], int(y - starts[ib] + 1))
        for x, y, ia, ib in zip(a, b, ident[a], ident[b])
    ]

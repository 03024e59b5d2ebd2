"""Screen image files before training or packing: every file TensorFlow cannot decode stops the run at once
(naming it) or is left out and counted, per `data.bad_images` (`--bad-images` for the writers).

Two passes: the format's markers (an empty, cut-short or foreign file is named with what is wrong, without
decoding it), then one decode of every other file, in parallel through tf.data, as training decodes it (a
garbled body passes the markers). Verdicts are cached by path, size and mtime (VERDICT_CACHE), so a second run
over the same files decodes nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from distface.config import InputError
from distface.data.folders import ImageList

_PGM_HEADER = re.compile(rb"P5\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s")
PROGRESS_FROM = 2000  # files to decode from which the screening draws a progress line
SKIP_HINT = "set data.bad_images: skip to leave such files out"


def verdict_cache() -> Path:
    """Where verdicts are kept: the user's cache (XDG_CACHE_HOME, else ~/.cache), one file per image root."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distface" / "screening"


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


def screen_paths(paths: Sequence[str], policy: str, progress: Callable[[int, int], None] | None = None,
                 hint: str = SKIP_HINT) -> dict[str, str]:
    """{path: problem} of the files that cannot be decoded. policy "fail" raises InputError naming the first
    (in list order), with `hint` saying how to skip. progress(done, total) follows the decoding of a large set."""
    if policy not in ("fail", "skip"):
        raise InputError(f"bad images: expected fail or skip, got {policy!r}")
    verdicts = _Verdicts(paths)
    problems, undecided = {}, []
    for path, known in zip(paths, verdicts.known()):
        problem = image_problem(path) if known is _UNKNOWN else known
        if problem is not None:
            problems[path] = problem
            verdicts.put(path, problem)
        elif known is _UNKNOWN:
            undecided.append(path)
    try:
        problems.update(_decode_problems(undecided, verdicts, progress if len(undecided) >= PROGRESS_FROM else None,
                                         stop_early=policy == "fail"))
    finally:
        verdicts.save()
    if policy == "fail" and problems:
        first = next(p for p in paths if p in problems)
        raise InputError(f"{first}: {problems[first]} ({hint})")
    return problems


def _decode_problems(paths: list[str], verdicts: _Verdicts, progress, stop_early: bool) -> dict[str, str]:
    """Decode each file once, as the training pipeline does; {path: why it failed}."""
    if not paths:
        return {}
    import tensorflow as tf

    from distface.data.failures import decode_each, failure_reason
    from distface.data.pipeline import decode_image

    def shape(path):
        return tf.shape(decode_image(path))

    problems = {}
    for index, result in decode_each(paths, shape):
        path = paths[index]
        problem = None if result is not None else f"cannot be decoded: {failure_reason(decode_image, path)}"
        verdicts.put(path, problem)
        if progress is not None:
            progress(index + 1, len(paths))
        if problem is not None:
            problems[path] = problem
            if stop_early:
                getattr(progress, "close", lambda: None)()  # end distface.progress.Progress's open line
                break
    return problems


_UNKNOWN = object()  # a file not screened as it is now


class _Verdicts:
    """Screening verdicts of the files under one root. A good file is kept as an 8-byte digest of its path
    relative to the root, size and mtime (MS1M's 5.8M files: 46 MB, checked with one np.isin); a bad one with
    its problem. A file whose size or mtime changed is screened again."""

    def __init__(self, paths: Sequence[str]):
        self.root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
        self.file = verdict_cache() / f"{hashlib.sha1(self.root.encode()).hexdigest()[:16]}.npz"
        self.stamps = [self._stamp(p) for p in paths]
        self.good, self.bad, self.new_good, self.changed = np.zeros(0, np.uint64), {}, [], False
        try:
            with np.load(self.file) as saved:
                if str(saved["root"]) == self.root:
                    self.good, self.bad = saved["good"], json.loads(str(saved["bad"]))
        except (OSError, ValueError, KeyError):
            pass  # no cache yet, or an unreadable one: decode again

    def _stamp(self, path: str) -> str | None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return f"{os.path.relpath(os.path.abspath(path), self.root)}\0{stat.st_size}\0{stat.st_mtime_ns}"

    @staticmethod
    def _digest(stamp: str) -> int:
        return int.from_bytes(hashlib.blake2b(stamp.encode(), digest_size=8).digest(), "little")

    def known(self) -> list:
        """Per path: its problem, None (good), or _UNKNOWN."""
        digests = np.array([self._digest(s) if s else 0 for s in self.stamps], np.uint64)
        good = np.isin(digests, self.good)
        return [None if ok else self.bad.get(stamp, _UNKNOWN) if stamp else _UNKNOWN
                for ok, stamp in zip(good.tolist(), self.stamps)]

    def put(self, path: str, problem: str | None) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        if problem is None:
            self.new_good.append(self._digest(stamp))
        else:
            self.bad[stamp] = problem
        self.changed = True

    def save(self) -> None:
        """Written atomically; a cache that cannot be written only means decoding again next time."""
        if not self.changed:
            return
        good = np.union1d(self.good, np.array(self.new_good, np.uint64))
        tmp = self.file.with_name(f".{self.file.stem}.{os.getpid()}.tmp.npz")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, root=np.array(self.root), good=good, bad=np.array(json.dumps(self.bad)))
            os.replace(tmp, self.file)
        except OSError:
            tmp.unlink(missing_ok=True)


def screen_images(images: ImageList, policy: str, progress: Callable[[int, int], None] | None = None,
                  hint: str = SKIP_HINT) -> tuple[ImageList, list[tuple[str, str]]]:
    """(the images to train on, [(path, problem)] left out), as screen_paths."""
    problems = screen_paths(images.paths, policy, progress, hint)
    if not problems:
        return images, []
    keep = np.array([p not in problems for p in images.paths])
    kept = dataclasses.replace(images, paths=tuple(p for p, k in zip(images.paths, keep) if k),
                               labels=np.asarray(images.labels)[keep])
    return kept, [(p, problems[p]) for p in images.paths if p in problems]

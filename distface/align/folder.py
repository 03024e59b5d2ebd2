"""Align a tree of raw photos (root/<identity>/<image>) into the same tree of template crops, over all cores.

Every input image ends up in exactly one place: aligned crops in OUT/<identity>/, or a line in OUT/no_face.txt
or OUT/failed.txt (with the reason: not an image, or the detector failed on it), and the summary counts all three.
A photo with more than one face gives its largest (or, --all, every face) and is listed in OUT/several_faces.txt,
so a group photo whose largest face is not the identity's can be found and checked.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from distface.align.similarity import template, umeyama, warp
from distface.console import quiet_tensorflow

NO_FACE = "no_face.txt"
FAILED = "failed.txt"
SEVERAL = "several_faces.txt"
_TASKS_PER_CALL = 8  # images a worker takes at a time: fewer round trips, still an even spread


def align_faces(image: np.ndarray, detector, size: Sequence[int], all_faces: bool = False) -> list[np.ndarray]:
    """The crops (uint8 [h, w, 3]) of the largest face, or of every face largest first; [] when there is none."""
    return crop_faces(image, detector(image), size, all_faces)


def crop_faces(image: np.ndarray, faces: Sequence, size: Sequence[int], all_faces: bool = False) -> list[np.ndarray]:
    """align_faces of faces already detected (largest first, as FaceDetector gives them)."""
    dst = template(size)
    return [warp(image, umeyama(face.landmarks, dst), size) for face in faces[:None if all_faces else 1]]


@dataclass
class AlignReport:
    images: int = 0
    aligned: int = 0  # images with at least one face
    faces: int = 0  # crops written
    no_face: list[str] = field(default_factory=list)
    several: list[str] = field(default_factory=list)  # images with more than one face
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)


def align_folder(raw: str | Path, out: str | Path, size: Sequence[int] = (112, 112), all_faces: bool = False,
                 workers: int | None = None, ext: str = ".png",
                 progress: Callable[[int, int], None] | None = None, verbose: bool = False) -> AlignReport:
    """Align every image of raw/<identity>/ into out/<identity>/<stem><ext> (--all: <stem>_<k><ext>, k = 0 for the
    largest face); out must be new or empty. Each file is written to a temporary name and renamed. verbose: the
    worker processes show TensorFlow's own log lines."""
    from distface.data.folders import scan_identity_folders

    template(size)  # a bad size stops here, before any work
    raw, out = Path(raw), Path(out)
    images = scan_identity_folders(raw)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder")
    tasks, seen = [], {}
    for path in images.paths:
        target = str(out / Path(path).parent.name / Path(path).stem)
        if target in seen:
            raise ValueError(f"{seen[target]} and {path} would both be aligned to {target}{ext}: rename one")
        seen[target] = path
        tasks.append((path, target))
    for identity in images.class_names:
        (out / identity).mkdir(parents=True, exist_ok=True)

    report = AlignReport(images=len(tasks))
    if progress is not None:
        progress(0, len(tasks))  # starts the clock
    job = (tuple(size), all_faces, ext)
    workers = min(workers or len(os.sched_getaffinity(0)), len(tasks))
    if workers == 1:
        _start_worker(threads=0)
        results = (_align_one(task, job) for task in tasks)
        _collect(results, tasks, report, raw, progress)
    else:
        # spawn, not fork: TensorFlow's threads do not survive a fork.
        # Each worker imports TensorFlow anew: quietly unless the command runs with --verbose.
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_start_worker, initargs=(1, verbose)) as pool:
            results = pool.map(_align_one, tasks, [job] * len(tasks), chunksize=_TASKS_PER_CALL)
            _collect(results, tasks, report, raw, progress)
    _write_list(out / NO_FACE, report.no_face)
    _write_list(out / FAILED, [f"{path}\t{reason}" for path, reason in report.failed])
    _write_list(out / SEVERAL, report.several)
    return report


def _collect(results, tasks, report: AlignReport, raw: Path, progress) -> None:
    for done, ((path, _), (written, found, reason)) in enumerate(zip(tasks, results), 1):
        name = os.path.relpath(path, raw)
        if reason:
            report.failed.append((name, reason))
        elif written:
            report.aligned += 1
            report.faces += written
        else:
            report.no_face.append(name)
        if found > 1:
            report.several.append(name)
        if progress is not None:
            progress(done, len(tasks))


_detector = None  # one per process, made by _start_worker


def _start_worker(threads: int, verbose: bool = False) -> None:
    """Load the detector once per process; threads > 0 caps TensorFlow's threads (one worker per core)."""
    global _detector
    quiet_tensorflow(verbose)
    import tensorflow as tf

    from distface.align.detector import FaceDetector

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    _detector = _detector or FaceDetector()


def _align_one(task: tuple[str, str], job: tuple) -> tuple[int, int, str]:
    """(crops written, faces found, "") or (0, 0, why the image could not be aligned)."""
    import tensorflow as tf

    from distface.data.pipeline import decode_image

    path, target = task
    size, all_faces, ext = job
    try:
        image = decode_image(tf.constant(path)).numpy()
    except tf.errors.OpError as err:
        return 0, 0, decode_error(err)
    try:
        faces = _detector(image)
        crops = crop_faces(image, faces, size, all_faces)
    except Exception as err:  # one odd photo among millions is listed, not allowed to stop the run
        return 0, 0, f"face detector failed: {type(err).__name__}: {err}"
    for k, crop in enumerate(crops):
        _write_image(f"{target}_{k}{ext}" if all_faces else f"{target}{ext}", crop)
    return len(crops), len(faces), ""


def decode_error(err) -> str:
    """TensorFlow's reason for an image it could not decode, without its op and device decoration."""
    return err.message.splitlines()[0].split("}} ")[-1].split(" [Op:")[0]


def _write_image(path: str, image: np.ndarray) -> None:
    from PIL import Image

    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp")
    Image.fromarray(image).save(tmp, format="JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG")
    os.replace(tmp, path)


def _write_list(path: Path, lines: list[str]) -> None:
    """A report file only when it has lines; written whole or not at all."""
    if lines:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, path)

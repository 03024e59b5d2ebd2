"""insightface's .bin verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin): read safely, write, load for eval.

A .bin is a pickle of (images, issame): images[2i] and images[2i+1] are pair i, issame[i] says whether they show
one person. insightface's own files hold the images as bytes (Python 2 `str` in the older ones, hence its
`encoding='bytes'`) or as uint8 numpy arrays (its alignment scripts append cv2.imencode's output), and issame as
a list of bools. A pickle can call any callable it names, so ours loads through an unpickler that resolves no
global except numpy's array, dtype and scalar reconstructors, limited to uint8 and bool, and the latin1 encoding
that Python 3 uses for bytes in protocol 2.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from distface.config import InputError
from distface.data.pipeline import eval_images_from_bytes, portable_images
from distface.data.recordio import atomic_outputs
from distface.data.validate import SKIP_HINT, screen_paths
from distface.eval.pairs import pair_image_paths, read_pairs

try:  # numpy >= 2 keeps the reconstructors in numpy._core; pickles may name either module
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

_ALLOWED_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something a .bin does not need."""


def _allowed(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype not in _ALLOWED_DTYPES:
        raise UnsafePickleError(f"numpy dtype {dtype!r} (only uint8 images and bool flags belong in a .bin)")
    return dtype


def _dtype(spec, align=False, copy=False) -> np.dtype:
    spec = spec.decode("latin1") if isinstance(spec, bytes) else spec
    _allowed(np.dtype(spec))
    return np.dtype(spec, align=bool(align), copy=bool(copy))  # a copy: unpickling then sets its state


def _reconstruct_array(subtype, shape, typecode):  # protocols 2-4; the dtype arrives later, through _dtype
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"array subtype {subtype!r}")
    return _reconstruct(subtype, shape, typecode)


def _frombuffer(buffer, dtype, shape, order):  # protocol 5
    return np.frombuffer(bytes(buffer), _allowed(dtype)).reshape(shape, order=order)


def _scalar(dtype, data=None):
    return scalar(_allowed(dtype), data)


def _latin1_encode(text, encoding="utf-8"):  # how Python 3 writes bytes in protocol 2 pickles
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _dtype, ("_codecs", "encode"): _latin1_encode,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct_array for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
}


class BinUnpickler(pickle.Unpickler):
    """Unpickles plain data (bytes, str, lists, tuples, bools, numbers) and uint8/bool numpy arrays and scalars.

    Every global a pickle names resolves to one of the guarded reconstructors above or fails, so a pickle that
    names os.system, eval or any class stops before anything runs.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        raise UnsafePickleError(f"refusing {module}.{name}: a .bin verification set holds only encoded "
                                     "images and booleans")


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """(encoded images [2P], issame bool [P]) of a .bin; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    try:
        # latin1 maps a Python 2 str (the older insightface files) one to one onto code points 0..255.
        with open(path, "rb") as f:
            loaded = BinUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise InputError(f"{path}: not a safe .bin verification set: {e}") from None
    except Exception as e:  # a corrupt pickle raises almost anything: EOFError, KeyError, ValueError, ...
        raise InputError(f"{path}: not a .bin verification set ({type(e).__name__}: {e})") from None
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise InputError(f"{path}: expected a pickled (images, issame) pair, got {type(loaded).__name__}"
                         f"{f' of length {len(loaded)}' if isinstance(loaded, (tuple, list)) else ''}")
    raw_images, raw_issame = loaded
    images = [_image_bytes(item, path, k) for k, item in enumerate(raw_images)]
    issame = np.asarray(raw_issame)
    if issame.ndim != 1 or issame.dtype != np.bool_ or not len(issame):
        raise InputError(f"{path}: issame must be a non-empty list of booleans")
    if len(images) != 2 * len(issame):
        raise InputError(f"{path}: {len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return images, issame.astype(bool)


def _image_bytes(item, path: Path, k: int) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):  # Python 2 str read as latin1
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise InputError(f"{path}: image {k} is a {type(item).__name__}, not encoded image bytes")


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Pickle (list of bytes, list of bool) as insightface does, atomically."""
    issame = [bool(x) for x in issame]
    if len(images) != 2 * len(issame):
        raise InputError(f"{len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    path = Path(path)
    with atomic_outputs(path) as (tmp,):
        with open(tmp, "wb") as f:
            pickle.dump(([bytes(b) for b in images], issame), f, protocol=4)


def pack_bin(pairs_file: str | os.PathLike, image_root: str | os.PathLike, out: str | os.PathLike,
             progress: Callable[[int, int], None] | None = None, bad_images: str = "fail",
             hint: str = SKIP_HINT) -> tuple[int, dict[str, str]]:
    """A .bin of the pairs of an LFW-format pairs file (JPEG/PNG bytes as they are, others as lossless PNG).

    Every image is decoded once first (distface.data.validate): bad_images "fail" raises naming the first that
    cannot be (with `hint`), "skip" leaves out the pairs that use one. Returns (pairs written, {path: problem}
    of the images left out). progress(done, total) follows the distinct images.
    """
    paths1, paths2, issame = pair_image_paths(image_root, read_pairs(pairs_file))
    problems = screen_paths(sorted(set(paths1 + paths2)), bad_images, hint=hint)
    kept = [k for k, pair in enumerate(zip(paths1, paths2)) if not problems.keys() & set(pair)]
    if not kept:
        raise InputError(f"{pairs_file}: every pair uses an image that cannot be decoded")
    paths1, paths2, issame = [paths1[k] for k in kept], [paths2[k] for k in kept], [issame[k] for k in kept]
    interleaved = [p for pair in zip(paths1, paths2) for p in pair]  # pair i is images 2i, 2i+1
    unique = sorted(set(interleaved))  # each file encoded once however many pairs use it
    encoded = {}
    for k, data in enumerate(portable_images(unique), 1):
        encoded[unique[k - 1]] = data
        if progress is not None:
            progress(k, len(unique))
    write_bin(out, [encoded[p] for p in interleaved], issame)
    return len(issame), problems


def load_bin_indexed(path: str | os.PathLike, image_size: Sequence[int],
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [U, h, w, 3], each distinct image once; index1, index2 [P] rows of images; issame [P]).

    The fields of distface.eval.runner.VerificationSet. Images are decoded and preprocessed as eval_images.
    """
    images, issame = read_bin(path)
    unique, first, inverse = np.unique(np.array(images, dtype=object), return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)

    def name(k: int) -> str:
        return f"{path}: image {first[k]} (pair {first[k] // 2})"

    decoded = eval_images_from_bytes(list(unique), image_size, batch_size, name)
    return decoded, inverse[0::2], inverse[1::2], issame


def load_bin(path: str | os.PathLike, image_size: Sequence[int],
             batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images1, images2 float32 [P, h, w, 3], issame bool [P]), decoded and preprocessed as eval_images."""
    images, index1, index2, issame = load_bin_indexed(path, image_size, batch_size)
    return images[index1], images[index2], issame

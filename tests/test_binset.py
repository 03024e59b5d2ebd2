"""insightface .bin verification sets: round trip from ORL pairs, the formats real files use, unsafe pickles."""

import os
import pickle

import numpy as np
import pytest

from distface.data.__main__ import main as data_main
from distface.data.binset import load_bin, load_bin_indexed, read_bin, write_bin
from distface.data.orl import ORL_EVAL_IDS, orl_root
from distface.data.pipeline import eval_images
from distface.eval.pairs import make_pairs, pair_image_paths, read_pairs, write_pairs

JPEG, PNG = b"\xff\xd8\xff\xe0jpeg", b"\x89PNG\r\n\x1a\npng"


def test_orl_bin_round_trip(tmp_path, capsys):
    pairs_file = tmp_path / "pairs.txt"
    write_pairs(pairs_file, make_pairs({f"s{i}": 10 for i in ORL_EVAL_IDS}, seed=0), num_folds=10)
    assert data_main(["bin", str(pairs_file), str(orl_root()), str(tmp_path / "orl.bin")]) == 0
    out = capsys.readouterr()
    assert "900 pairs" in out.out and "encoded 100/100 images |" in out.err
    images1, images2, issame = load_bin(tmp_path / "orl.bin", (112, 96))
    paths1, paths2, expected_issame = pair_image_paths(orl_root(), read_pairs(pairs_file))
    assert images1.shape == (900, 112, 96, 3) and images1.dtype == np.float32
    np.testing.assert_array_equal(issame, expected_issame)
    unique = sorted(set(paths1 + paths2))
    folder = dict(zip(unique, eval_images(unique, (112, 96))))
    np.testing.assert_array_equal(images1, np.stack([folder[p] for p in paths1]))
    np.testing.assert_array_equal(images2, np.stack([folder[p] for p in paths2]))
    images, index1, index2, _ = load_bin_indexed(tmp_path / "orl.bin", (112, 96))
    assert len(images) == 100  # each of the 100 images once
    np.testing.assert_array_equal(images[index1], images1)
    np.testing.assert_array_equal(images[index2], images2)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    pickle.loads(pickle.dumps(Exploit()))  # the exploit works on a plain unpickler...
    assert marker.exists()
    marker.unlink()
    for protocol in (2, 4, 5):
        (tmp_path / "evil.bin").write_bytes(pickle.dumps(([JPEG, Exploit()], [True]), protocol=protocol))
        with pytest.raises(ValueError, match=r"evil\.bin: not a safe \.bin verification set: refusing posix\.system"):
            read_bin(tmp_path / "evil.bin")
        assert not marker.exists()  # ...and does nothing through ours
    (tmp_path / "eval.bin").write_bytes(pickle.dumps((eval, ("1",)), protocol=4))
    with pytest.raises(ValueError, match="refusing builtins.eval"):
        read_bin(tmp_path / "eval.bin")
    objects = np.array([JPEG, PNG], dtype=object)  # an object array would unpickle its elements as it likes
    (tmp_path / "obj.bin").write_bytes(pickle.dumps((objects, [True])))
    with pytest.raises(ValueError, match=r"numpy dtype dtype\('O'\)"):
        read_bin(tmp_path / "obj.bin")


def test_python2_insightface_layout(tmp_path):
    # What insightface's lfw.bin holds: a protocol 2 pickle from Python 2, images as str (SHORT_BINSTRING).
    def short_binstring(data):
        return b"U" + bytes([len(data)]) + data

    raw = (b"\x80\x02" + b"]q\x00(" + short_binstring(JPEG) + short_binstring(PNG) + b"e"
           + b"]q\x01\x88a" + b"\x86q\x02.")
    (tmp_path / "lfw.bin").write_bytes(raw)
    images, issame = read_bin(tmp_path / "lfw.bin")
    assert images == [JPEG, PNG] and issame.tolist() == [True]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_images_and_flags(tmp_path, protocol):
    # insightface's alignment scripts store cv2.imencode's uint8 arrays; flags may be numpy bools.
    images = [np.frombuffer(JPEG, np.uint8), PNG, np.frombuffer(PNG, np.uint8), JPEG]
    for issame in ([np.bool_(True), False], np.array([True, False])):
        (tmp_path / "a.bin").write_bytes(pickle.dumps((images, issame), protocol=protocol))
        got, flags = read_bin(tmp_path / "a.bin")
        assert got == [JPEG, PNG, PNG, JPEG] and flags.tolist() == [True, False] and flags.dtype == bool


def test_malformed_sets(tmp_path):
    path = tmp_path / "x.bin"
    for content, message in [
        (([JPEG], [True], [0.5]), "expected a pickled \\(images, issame\\) pair, got tuple of length 3"),
        (([JPEG, PNG, JPEG], [True]), "3 images for 1 pairs \\(expected 2\\)"),
        (([JPEG, 7], [True]), "image 1 is a int, not encoded image bytes"),
        (([JPEG, PNG], [1]), "issame must be a non-empty list of booleans"),
    ]:
        path.write_bytes(pickle.dumps(content))
        with pytest.raises(ValueError, match=rf"x\.bin: {message}"):
            read_bin(path)
    path.write_bytes(pickle.dumps(([JPEG, PNG], [True]))[:-5])
    with pytest.raises(ValueError, match=r"x\.bin: not a \.bin verification set \("):
        read_bin(path)
    with pytest.raises(FileNotFoundError, match="verification set not found"):
        read_bin(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(path, [JPEG, PNG, JPEG], [True])

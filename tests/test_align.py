"""Face alignment: the template constants, Umeyama against the closed form, the warp's pixel convention, an ORL face
on a larger canvas back onto the template, and the folder CLI's accounting of images without a face."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from distface.align.similarity import ARCFACE_112X112, apply, template, template_size_for, umeyama, warp
from distface.data.orl import orl_root
from distface.data.pipeline import decode_image


def similarity(angle_deg, scale, tx, ty):
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def compose(a, b):
    """The 2x3 matrix of x -> a(b(x))."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def orl_image(name):
    return decode_image(tf.constant(str(orl_root() / name))).numpy()


def test_templates_are_the_published_arcface_and_sphereface_values():
    # insightface, python-package/insightface/utils/face_align.py: arcface_dst; SphereFace's 112x96 crop is the
    # same face with x 8 px smaller (insightface's src1..src5 before `src[:, 0] += 8.0`).
    arcface = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
    sphereface = [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                  [62.7299, 92.2041]]
    np.testing.assert_array_equal(template((112, 112)), arcface)
    np.testing.assert_allclose(template((112, 96)), sphereface, atol=1e-12)
    assert template_size_for((112, 96)) == template_size_for((56, 48)) == (112, 96)
    assert template_size_for((112, 112)) == (112, 112)
    with pytest.raises(ValueError, match="112x112"):
        template((128, 128))


def closed_form_similarity(src, dst):
    """Least-squares similarity in complex numbers: dst ~ a * src + b, a = s e^{i theta}; independent of SVD."""
    z, w = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = np.sum(wc * np.conj(zc)) / np.sum(np.abs(zc) ** 2)
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def test_umeyama_is_the_least_squares_similarity():
    rng = np.random.default_rng(0)
    for _ in range(20):
        src = rng.uniform(0, 200, (5, 2))
        dst = apply(similarity(rng.uniform(-180, 180), rng.uniform(0.2, 3), *rng.uniform(-50, 50, 2)), src)
        noisy = dst + rng.normal(0, 3, dst.shape)
        np.testing.assert_allclose(umeyama(src, noisy), closed_form_similarity(src, noisy), atol=1e-9)
        np.testing.assert_allclose(apply(umeyama(src, dst), src), dst, atol=1e-9)  # exact when there is no noise
    mirrored = ARCFACE_112X112 * [-1, 1]  # best fitted by a reflection, which a similarity must not use
    m = umeyama(ARCFACE_112X112, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    np.testing.assert_allclose(m, closed_form_similarity(ARCFACE_112X112, mirrored), atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        umeyama(np.ones((5, 2)), ARCFACE_112X112)


def test_warp_puts_source_pixel_centres_where_the_matrix_maps_them():
    image = np.zeros((60, 80, 3), np.uint8)
    dots = np.array([[10, 12], [50, 20], [30, 45]])  # (x, y)
    image[dots[:, 1], dots[:, 0]] = 255
    shifted = warp(image, similarity(0, 1, 7, -3), (60, 80))  # integer shift: exact
    np.testing.assert_array_equal(np.argwhere(shifted[..., 0] == 255)[:, ::-1], sorted((dots + [7, -3]).tolist(),
                                                                                       key=lambda p: (p[1], p[0])))
    m = similarity(30, 2.0, 40, -10)
    big = warp(image, m, (160, 200))
    for x, y in apply(m, dots):  # the brightest pixel near each mapped dot is within a pixel of it
        r, c = round(y), round(x)
        window = big[r - 3:r + 4, c - 3:c + 4, 0]
        dr, dc = np.unravel_index(np.argmax(window), window.shape)
        assert abs(r - 3 + dr - y) <= 1 and abs(c - 3 + dc - x) <= 1
    assert big.dtype == np.uint8 and big.shape == (160, 200, 3) and big[0, -1].tolist() == [0, 0, 0]


class KnownLandmarks:
    """A detector that returns given landmarks: the alignment arithmetic without the detector's noise."""

    def __init__(self, landmarks):
        from distface.align.detector import Face

        self.faces = [Face(np.array([0, 0, 10, 10.0]), 1.0, np.asarray(landmarks, float))]

    def __call__(self, image):
        return self.faces


def test_known_landmarks_on_a_canvas_land_on_the_template():
    from distface.align.folder import align_faces

    face = orl_image("s12/1.pgm")
    # Where the template's points sit in the ORL image if the 112x112 crop were its centre, scaled up a little.
    placement = similarity(0, 0.9, -5, 0)
    landmarks = apply(placement, ARCFACE_112X112)
    canvas_map = similarity(20, 2.5, 160, 40)
    canvas = warp(face, canvas_map, (400, 480))
    (crop,) = align_faces(canvas, KnownLandmarks(apply(canvas_map, landmarks)), (112, 112))
    fit = umeyama(apply(canvas_map, landmarks), ARCFACE_112X112)
    np.testing.assert_allclose(apply(fit, apply(canvas_map, landmarks)), ARCFACE_112X112, atol=1e-9)
    direct = warp(face, umeyama(landmarks, ARCFACE_112X112), (112, 112))  # the same face aligned without the canvas
    assert np.mean(np.abs(crop.astype(float) - direct)) < 6  # two bilinear resamplings apart


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mtcnn")
    from distface.align.detector import FaceDetector

    return FaceDetector()


@pytest.mark.parametrize("placement", [(15, 2.3, 150, 60), (-10, 1.5, 300, 200)])
def test_orl_face_on_a_canvas_comes_back_within_2px_of_the_template(detector, placement):
    """The face's landmarks on the canvas are known (the placement applied to those of the original image); the
    alignment found on the canvas puts them within 2 px of where the template fit of the original puts them."""
    face = orl_image("s12/1.pgm")
    (original,) = detector(face)[:1]
    on_template = umeyama(original.landmarks, ARCFACE_112X112)
    s = similarity(*placement)
    canvas = warp(face, s, (480, 640))
    known = apply(s, original.landmarks)
    faces = detector(canvas)
    assert len(faces) == 1
    found = umeyama(faces[0].landmarks, ARCFACE_112X112)
    assert np.max(np.abs(apply(found, known) - apply(on_template, original.landmarks))) <= 2.0
    # ... and a similarity cannot do better than the face's own shape allows: the fit is close to the template.
    assert np.max(np.abs(apply(on_template, original.landmarks) - ARCFACE_112X112)) <= 4.0


def test_no_face_gives_no_crop(detector):
    from distface.align.folder import align_faces

    rng = np.random.default_rng(0)
    assert align_faces(np.full((200, 240, 3), 128, np.uint8), detector, (112, 112)) == []
    assert align_faces(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8), detector, (112, 96)) == []


def test_align_cli_writes_the_tree_and_lists_every_image_without_a_face(tmp_path, detector):
    from PIL import Image

    raw = tmp_path / "raw"
    for identity in ("s31", "s32"):
        (raw / identity).mkdir(parents=True)
        for i in (1, 2):
            (raw / identity / f"{i}.pgm").write_bytes((orl_root() / identity / f"{i}.pgm").read_bytes())
    Image.fromarray(np.full((120, 100, 3), 90, np.uint8)).save(raw / "s32" / "wall.png")
    (raw / "s31" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "aligned"
    shell = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # what a user's shell has
    proc = subprocess.run([sys.executable, "-m", "distface.data", "align", str(raw), str(out), "--size", "112x96",
                           "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=300, env=shell)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # the worker processes' TensorFlow is as quiet as the command's
    assert "aligned 4 of 6 images (4 faces)" in proc.stdout and "no face in 1" in proc.stdout
    assert "1 failed" in proc.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == \
        ["s31/1.png", "s31/2.png", "s32/1.png", "s32/2.png"]
    assert Image.open(out / "s31" / "1.png").size == (96, 112)
    assert (out / "no_face.txt").read_text() == "s32/wall.png\n"
    assert (out / "failed.txt").read_text().startswith("s31/broken.jpg\t")
    assert not list(out.rglob(".*"))  # no temporary file left

    again = subprocess.run([sys.executable, "-m", "distface.data", "align", str(raw), str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("distface: ")
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


def test_align_cli_missing_folder_exits_2(tmp_path, capsys):
    from distface.data.__main__ import main

    assert main(["align", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


class CountedFaces:
    """A detector that finds as many faces as the image's first pixel says, largest first, each on the template."""

    def __call__(self, image):
        from distface.align.detector import Face

        return [Face(np.array([0, 0, 100 - k, 100 - k], float), 1.0, ARCFACE_112X112) for k in range(image[0, 0, 0])]


@pytest.mark.parametrize("all_faces", [False, True], ids=["largest", "all"])
def test_align_summary_counts_photos_with_several_faces_and_says_which_was_kept(tmp_path, monkeypatch, capsys,
                                                                                all_faces):
    from PIL import Image

    from distface.align import folder
    from distface.data.__main__ import main

    raw, out = tmp_path / "raw", tmp_path / "aligned"
    for identity, counts in (("a", (1, 2)), ("b", (0, 3))):
        (raw / identity).mkdir(parents=True)
        for i, count in enumerate(counts):
            Image.fromarray(np.full((120, 120, 3), count, np.uint8)).save(raw / identity / f"{i}.png")
    monkeypatch.setattr(folder, "_detector", CountedFaces())  # one worker: this process's detector is used
    assert main(["align", str(raw), str(out), "--workers", "1", "--quiet", *(["--all"] if all_faces else [])]) == 0
    kept = "kept every face, <name>_0 the largest" if all_faces else "kept the largest"
    assert capsys.readouterr().out == (
        f"aligned 3 of 4 images ({6 if all_faces else 3} faces) -> {out} | no face in 1 (listed in "
        f"{out / 'no_face.txt'}) | more than one face in 2: {kept} (listed in {out / 'several_faces.txt'})\n")
    assert (out / "several_faces.txt").read_text() == "a/1.png\nb/1.png\n"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == (["a/0_0.png", "a/1_0.png", "a/1_1.png", "b/1_0.png", "b/1_1.png", "b/1_2.png"] if all_faces
                       else ["a/0.png", "a/1.png", "b/1.png"])


def test_align_summary_says_nothing_of_several_faces_when_each_photo_has_one(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from distface.align import folder
    from distface.data.__main__ import main

    (tmp_path / "raw" / "a").mkdir(parents=True)
    Image.fromarray(np.full((120, 120, 3), 1, np.uint8)).save(tmp_path / "raw" / "a" / "0.png")
    monkeypatch.setattr(folder, "_detector", CountedFaces())
    assert main(["align", str(tmp_path / "raw"), str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 0
    assert capsys.readouterr().out == f"aligned 1 of 1 images (1 faces) -> {tmp_path / 'out'} | no face in 0\n"
    assert not (tmp_path / "out" / "several_faces.txt").exists()

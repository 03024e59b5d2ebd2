"""Broken image files: found before training, named (data.bad_images: fail, exit 2) or left out and counted
(skip)."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from distface.data.folders import scan_identity_folders
from distface.data.orl import orl_split
from distface.data.validate import image_problem, screen_images


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    for ident in ("a", "b"):
        (tmp_path / ident).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / ident / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "a" / "6.jpg")
    full = (tmp_path / "a" / "6.jpg").read_bytes()
    (tmp_path / "a" / "7.jpg").write_bytes(full[:len(full) // 2])        # cut short
    (tmp_path / "b" / "6.png").write_bytes(b"")                           # empty
    (tmp_path / "b" / "7.pgm").write_bytes(b"P5\n36 40\n255\n" + bytes(100))  # shorter than 36 x 40
    (tmp_path / "b" / "8.jpg").write_bytes(b"<html>not an image</html>")
    return tmp_path


def test_problems_are_named(tree):
    assert image_problem(str(tree / "a" / "0.png")) is None and image_problem(str(tree / "a" / "6.jpg")) is None
    assert "cut short" in image_problem(str(tree / "a" / "7.jpg"))
    assert image_problem(str(tree / "b" / "6.png")) == "empty file"
    assert "shorter" in image_problem(str(tree / "b" / "7.pgm"))
    assert "not a JPEG" in image_problem(str(tree / "b" / "8.jpg"))


def test_screen_fail_and_skip(tree):
    images = scan_identity_folders(tree)
    with pytest.raises(ValueError, match="7.jpg: JPEG without its end marker"):
        screen_images(images, "fail")
    kept, bad = screen_images(images, "skip")
    assert len(bad) == 4 and len(kept) == len(images) - 4 and kept.num_classes == 2
    assert all(image_problem(p) is None for p in kept.paths)
    np.testing.assert_array_equal(kept.labels, [0] * 7 + [1] * 6)


def test_every_orl_image_passes():
    assert screen_images(orl_split(range(1, 41)), "fail")[1] == []


def cli(tree, out, *args):
    return subprocess.run([sys.executable, "-m", "distface.train", "--config", "distface/configs/debug.yaml",
                           "--set", "data.source=folder", "--set", f"data.path={tree}", "--set", "data.batch_size=4",
                           "--set", "train.steps=2", "--set", "model.image_size=[40, 36]", "--set", "eval.flip=false",
                           "--set", f"train.out_dir={out}", *args], capture_output=True, text=True, timeout=300)


def test_cli_fails_naming_the_file_or_skips(tree, tmp_path):
    failed = cli(tree, tmp_path / "fail")
    assert failed.returncode == 2 and "7.jpg: JPEG without its end marker" in failed.stderr
    assert not (tmp_path / "fail").exists()
    skipped = cli(tree, tmp_path / "skip", "--set", "data.bad_images=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "left out 4 of 17 images" in skipped.stderr


class NotChief:
    """The single-device engine as a job's second process would see itself (not the chief)."""

    def __new__(cls):
        from distface.parallel.single import SingleEngine

        class Worker(SingleEngine):
            process_index = 1

        return Worker()


@pytest.mark.parametrize("chief", [True, False], ids=["chief", "worker"])
@pytest.mark.parametrize("image_size", [(40, 36), (40, 48)], ids=["same-shape", "stretched"])
def test_only_the_chief_reports_left_out_and_stretched_images(tree, tmp_path, capsys, monkeypatch, chief, image_size):
    import distface.parallel
    from distface.checked_config import load_config
    from distface.parallel.single import SingleEngine
    from distface.training.session import Session

    monkeypatch.setattr(distface.parallel, "build_engine", lambda *args: SingleEngine() if chief else NotChief())
    cfg = load_config("distface/configs/debug.yaml", ["data.source=folder", f"data.path={tree}",
                                                      "data.bad_images=skip", "data.batch_size=4",
                                                      f"model.image_size={list(image_size)}",
                                                      f"train.out_dir={tmp_path / 'run'}"])
    Session(cfg, quiet=True)
    printed = capsys.readouterr()
    assert ("left out 4 of 17 images" in printed.err) == chief, printed.err
    warnings = [line for line in printed.err.splitlines() if "resized to model.image_size" in line]
    if chief and image_size == (40, 48):
        assert warnings == [f"distface: warning: images of 40x36 (such as {tree / 'a' / '0.png'}) are resized to "
                            "model.image_size 40x48, which changes their aspect ratio; align or crop them to that "
                            "shape, or set model.image_size"], printed.err
    else:
        assert warnings == [], printed.err
    assert "left out" not in printed.out and "resized" not in printed.out

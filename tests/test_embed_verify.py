"""embed and verify on ORL images with a trained debug run and with its ONNX export: the same embeddings and
decisions from both, "same" for two images of one identity and "different" for two identities at the threshold the
run's evaluation chose, exit 2 with one line for a missing image or an empty folder; and the eval CLI's
identification figures and curve pictures for the same run."""
import subprocess
import sys

import numpy as np
import pytest

from distface.data.orl import orl_root
from distface.serving.embed import main as embed_main
from distface.serving.verify import main as verify_main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "run"
    proc = subprocess.run([sys.executable, "-m", "distface.train", "--config", "distface/configs/debug.yaml",
                           f"--set=train.out_dir={out}", "--set=train.checkpoint_every=0", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from distface.serving.export import export

    return export(run, tmp_path_factory.mktemp("onnx") / "model", "onnx")[0]


def orl(name):
    return str(orl_root() / name)


@pytest.mark.parametrize("which", ["run", "onnx export"])
def test_verify_same_person_and_different_people(run, exported, capsys, which):
    model = str(run if which == "run" else exported)
    # s2 is a training identity the debug run separates well; s1 and s2 are different people.
    assert verify_main([orl("s2/1.pgm"), orl("s2/2.pgm"), "--model", model]) == 0
    same = capsys.readouterr().out
    assert same.startswith("same | cosine ") and "FAR 0.001 on pairs at step 150" in same
    assert verify_main([orl("s1/1.pgm"), orl("s2/2.pgm"), "--model", model]) == 0
    assert capsys.readouterr().out.startswith("different | cosine ")


def test_embed_writes_embeddings_and_paths_the_same_from_run_and_export(run, exported, tmp_path, capsys):
    from distface.training.checkpoint import load_backbone
    from distface.data.pipeline import eval_images
    from distface.eval.runner import embed

    inputs = [orl("s31"), orl("s32/1.pgm")]
    for name, model in (("run", run), ("onnx", exported)):
        assert embed_main([*inputs, "--model", str(model), "--out", str(tmp_path / f"{name}.npy"), "--quiet"]) == 0
        assert "embedded 11 of 11 images (d = 128)" in capsys.readouterr().out
    paths = (tmp_path / "run.txt").read_text().splitlines()
    assert paths == [orl(f"s31/{i}.pgm") for i in range(1, 11)] + [orl("s32/1.pgm")]
    assert (tmp_path / "onnx.txt").read_text().splitlines() == paths
    from_run, from_export = np.load(tmp_path / "run.npy"), np.load(tmp_path / "onnx.npy")
    assert from_run.shape == (11, 128) and from_run.dtype == np.float32
    assert np.max(np.abs(from_run - from_export)) <= 1e-4
    cfg, backbone, _ = load_backbone(run)
    assert cfg.eval.flip  # the embeddings the run's evaluation computes, mirrored images included
    expected = embed(backbone, eval_images(paths, cfg.model.image_size), flip=True)
    np.testing.assert_allclose(from_run, expected, atol=1e-6)
    assert not list(tmp_path.glob(".*"))


def test_missing_image_or_empty_folder_exits_2_with_one_line(run, tmp_path, capsys):
    assert verify_main([orl("s1/1.pgm"), str(tmp_path / "nope.jpg"), "--model", str(run)]) == 2
    (tmp_path / "empty").mkdir()
    assert embed_main([str(tmp_path / "empty"), "--model", str(run), "--out", str(tmp_path / "e.npy")]) == 2
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert verify_main([orl("s1/1.pgm"), str(tmp_path / "broken.jpg"), "--model", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("distface: ") for line in err)
    assert "nope.jpg: no such image or folder" in err[0] and "no images in this folder" in err[1]
    assert "broken.jpg: cannot be decoded" in err[2]
    assert not (tmp_path / "e.npy").exists()


def test_verify_with_align_finds_the_faces_or_says_there_is_none(run, tmp_path, capsys):
    pytest.importorskip("mtcnn")
    from PIL import Image

    assert verify_main([orl("s2/1.pgm"), orl("s2/2.pgm"), "--model", str(run), "--align"]) == 0
    assert capsys.readouterr().out.split(" | ")[0] in ("same", "different")
    Image.fromarray(np.full((120, 100, 3), 90, np.uint8)).save(tmp_path / "wall.png")
    assert verify_main([orl("s2/1.pgm"), str(tmp_path / "wall.png"), "--model", str(run), "--align"]) == 2
    assert capsys.readouterr().err.strip() == f"distface: {tmp_path / 'wall.png'}: no face found"


def test_eval_cli_prints_identification_beside_verification(run, tmp_path, capsys):
    from PIL import Image

    from distface.eval.__main__ import main as eval_main

    assert eval_main(["--checkpoint", str(run), "--plots", str(tmp_path)]) == 0
    verification, identification, written = capsys.readouterr().out.strip().splitlines()
    assert written == f"wrote {tmp_path / 'roc.png'}, {tmp_path / 'cmc.png'}"
    assert "pairs: accuracy" in verification and "900 pairs" in verification
    assert "pairs identification: rank-1 " in identification and "TPIR " in identification
    assert "10 identities, 90 probes, 90 impostor probes" in identification
    assert Image.open(tmp_path / "roc.png").size == Image.open(tmp_path / "cmc.png").size == (640, 480)


def unaligned(path, h, w, to=(56, 48)):
    return (f"distface: warning: {path} is {h}x{w}, shaped unlike the model's {to[0]}x{to[1]} input: it does not "
            f"look aligned (--align detects and aligns the faces); it is resized to {to[0]}x{to[1]}, which "
            "stretches the face")


def photo(path, h, w):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)).save(path)
    return str(path)


def test_unaligned_warning_names_the_first_input_shaped_unlike_the_model(tmp_path):
    from distface.serving.images import unaligned_warning

    wide = photo(tmp_path / "wide.png", 60, 80)
    # ORL's 112x92 on the debug net's 56x48: the same shape within distface.data.aspect's tolerance
    assert unaligned_warning([orl("s1/1.pgm"), orl("s2/1.pgm")], (56, 48), align=False) is None
    assert f"distface: {unaligned_warning([orl('s1/1.pgm'), wide], (56, 48), align=False)}" == \
        unaligned(wide, 60, 80)
    assert unaligned_warning([orl("s1/1.pgm"), wide], (56, 48), align=True) is None  # --align makes the shape
    assert unaligned_warning([orl("s1/1.pgm"), wide], (112, 112), align=False).startswith(
        f"warning: {orl('s1/1.pgm')} is 112x92, shaped unlike the model's 112x112 input")
    # A square photo for a square model: its shape is right, its size says it is not a crop.
    square = photo(tmp_path / "square.png", 400, 400)
    assert unaligned_warning([square], (112, 112), align=False) == (
        f"warning: {square} is 400x400, far larger than the model's 112x112 input: it does not look aligned "
        "(--align detects and aligns the faces); it is resized to 112x112")
    assert unaligned_warning([photo(tmp_path / "crop.png", 224, 224)], (112, 112), align=False) is None


def test_verify_and_embed_warn_once_about_unaligned_inputs(run, tmp_path, capsys):
    photos = [photo(tmp_path / f"{i}.png", 120, 160) for i in range(3)]
    assert verify_main([orl("s2/1.pgm"), photos[0], "--model", str(run)]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines() == [unaligned(photos[0], 120, 160)]
    assert printed.out.startswith(("same | ", "different | "))
    assert embed_main([orl("s31"), *photos, "--model", str(run), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines() == [unaligned(photos[2], 120, 160)]  # the last input is among those looked at
    assert "embedded 13 of 13 images" in printed.out
    assert verify_main([orl("s2/1.pgm"), orl("s2/2.pgm"), "--model", str(run)]) == 0
    assert capsys.readouterr().err == ""  # ORL photos on the net trained on them: no warning

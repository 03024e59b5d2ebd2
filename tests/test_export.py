"""Export to SavedModel, ONNX and TFLite: each reproduces the checkpoint's embeddings on ORL images within 1e-4 (the
export checks itself and fails above), runs at any batch size in a fresh process without distface (and, for ONNX
and TFLite, without TensorFlow), and carries the run's verification threshold."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from distface.serving.export import TOLERANCE, ExportCheckError, export, main

RUNTIMES = {  # a fresh process: read images.npy, write embeddings.npy, import neither distface nor (but SavedModel) TF
    "savedmodel": ("import tensorflow as tf\n"
                   "f = tf.saved_model.load(sys.argv[1]).signatures['embed_float']\n"
                   "run = lambda x: f(images=tf.constant(x))['embeddings'].numpy()\n"),
    "onnx": ("import onnxruntime as ort\n"
             "s = ort.InferenceSession(sys.argv[1] + '/model.onnx', providers=['CPUExecutionProvider'])\n"
             "run = lambda x: s.run(['embeddings'], {'images': x})[0]\n"),
    "tflite": ("from ai_edge_litert.interpreter import Interpreter\n"
               "it = Interpreter(model_path=sys.argv[1] + '/model.tflite')\n"
               "i, o = it.get_input_details()[0]['index'], it.get_output_details()[0]['index']\n"
               "def run(x):\n"
               "    it.resize_tensor_input(i, x.shape); it.allocate_tensors(); it.set_tensor(i, x); it.invoke()\n"
               "    return it.get_tensor(o)\n"),
}
MODULES = {"savedmodel": "tensorflow", "onnx": "onnxruntime", "tflite": "ai_edge_litert"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    proc = subprocess.run([sys.executable, "-m", "distface.train", "--config", "distface/configs/debug.yaml",
                           f"--set=train.out_dir={out}", "--set=train.steps=4", "--set=train.checkpoint_every=0",
                           "--set=data.batch_size=16", "--set=eval.flip=false", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(run):
    """ORL images of the run's evaluation set and the checkpoint's embeddings of them."""
    from distface.training.checkpoint import load_backbone
    from distface.serving.export import check_images
    from distface.models.embedder import build_module

    cfg, backbone, _ = load_backbone(run)
    images = check_images(cfg)
    module = build_module(backbone, cfg.model.image_size)  # kept: its tf.function holds it weakly
    return images, module.embed_float(images)["embeddings"].numpy()


@pytest.mark.parametrize("fmt", ["savedmodel", "onnx", "tflite"])
def test_export_reproduces_the_checkpoint_in_a_fresh_process(run, reference, tmp_path, capsys, fmt):
    pytest.importorskip(MODULES[fmt])
    out = tmp_path / fmt
    assert main(["--checkpoint", str(run), "--out", str(out), "--format", fmt]) == 0
    line = capsys.readouterr().out
    diff = float(line.split("max |embedding - checkpoint's| ")[1].split()[0])
    assert diff <= TOLERANCE and "threshold: distance" in line

    info = json.loads((out / "distface.json").read_text())
    last = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    assert info["threshold"]["distance"] == last["val_threshold"] and info["threshold"]["far"] == 1e-3
    assert (info["format"], info["image_size"], info["flip"]) == (fmt, [56, 48], False)

    images, expected = reference
    np.save(tmp_path / "images.npy", images)
    script = ("import sys, numpy as np\n" + RUNTIMES[fmt] +
              "x = np.load(sys.argv[2])\n"
              "e = np.concatenate([run(x[:3]), run(x[3:])])\n"  # two batch sizes: the batch dimension is dynamic
              "assert not [m for m in sys.modules if m.startswith('distface')]\n"
              f"assert {fmt == 'savedmodel'} or 'tensorflow' not in sys.modules\n"
              "np.save(sys.argv[3], e)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "images.npy"),
                           str(tmp_path / "embeddings.npy")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "embeddings.npy")
    assert got.shape == expected.shape and np.max(np.abs(got - expected)) <= TOLERANCE
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_failed_check_writes_nothing(run, tmp_path, monkeypatch):
    import distface.serving.export

    real = distface.serving.export.exported_forward

    def perturbed(fmt, path):
        forward = real(fmt, path)
        return lambda x: forward(x) + 1e-3

    monkeypatch.setattr(distface.serving.export, "exported_forward", perturbed)
    with pytest.raises(ExportCheckError, match="differs from the checkpoint by up to 0.001"):
        export(run, tmp_path / "bad", "tflite")
    assert list(tmp_path.iterdir()) == []  # neither the export nor its staging folder


def test_bad_export_requests_exit_2(run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["--checkpoint", str(run), "--out", str(tmp_path / "taken")]) == 2
    assert main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already exists" in err[0] and "not a distface run directory" in err[1]


def test_the_export_folder_follows_the_umask(run, tmp_path):
    previous = os.umask(0o027)
    try:
        out, _ = export(run, tmp_path / "shared", "savedmodel")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # 0o777 minus the umask, not mkdtemp's 0700

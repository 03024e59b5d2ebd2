"""Embeddings from a training run or an exported model, through one interface (`load_model`).

A run directory (config.yaml + checkpoints) runs its latest checkpoint's backbone; an export directory (see
distface.serving.export: distface.json beside a SavedModel, model.onnx or model.tflite) runs the exported file with
TensorFlow, onnxruntime or the TFLite interpreter. Either way the model maps float32 images [n, h, w, 3], normalised
as in training ((x - 127.5) / 128), to L2-normalised float32 embeddings [n, d] computed as the run's evaluation
computes them (with the mirrored image when eval.flip), and carries the distance threshold its last evaluation
chose at FAR 1e-3.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

EXPORT_INFO = "distface.json"  # an export directory's description, written last by distface.serving.export
MODEL_FILES = {"savedmodel": "", "onnx": "model.onnx", "tflite": "model.tflite"}  # relative to the export dir


@dataclass(frozen=True)
class Threshold:
    """The verification threshold of a run's last evaluation: same identity iff distance < `distance`."""
    distance: float  # euclidean, between L2-normalised embeddings
    far: float  # the FAR it was chosen for (on the training folds of the pairs set)
    step: int
    pairs: str  # the verification set it was chosen on

    @property
    def cosine(self) -> float:
        """The same threshold on cosine similarity: |a - b|^2 = 2 - 2 cos for unit vectors; same iff cosine > it."""
        return 1.0 - self.distance ** 2 / 2.0


def run_threshold(run_dir: str | Path) -> Threshold | None:
    """The VAL threshold of the first set evaluated at the last evaluated step of <run>/eval.jsonl, if any."""
    path = Path(run_dir) / "eval.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = [r for r in records if r["step"] == max((r["step"] for r in records), default=None)]
    if not last or not math.isfinite(last[0].get("val_threshold", math.nan)):
        return None
    r = last[0]
    return Threshold(r["val_threshold"], r.get("far_target", 1e-3), r["step"], r["pairs"])


@dataclass
class Model:
    forward: Callable[[np.ndarray], np.ndarray]  # one batch: float32 [n, h, w, 3] -> L2-normalised [n, d]
    image_size: tuple[int, int]
    threshold: Threshold | None
    source: str  # what was loaded, for messages

    def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """L2-normalised embeddings [N, d], batch by batch."""
        batches = [self.forward(np.ascontiguousarray(images[start:start + batch_size], np.float32))
                   for start in range(0, len(images), batch_size)]
        return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)


def load_model(path: str | Path) -> Model:
    """A run directory or an export directory as a Model."""
    path = Path(path)
    if (path / EXPORT_INFO).is_file():
        info = json.loads((path / EXPORT_INFO).read_text())
        threshold = Threshold(**info["threshold"]) if info.get("threshold") else None
        forward = exported_forward(info["format"], path / MODEL_FILES[info["format"]])
        return Model(forward, tuple(info["image_size"]), threshold, f"{info['format']} {path}")
    from distface.models.embedder import build_module
    from distface.training.checkpoint import load_backbone

    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: neither a run directory (config.yaml) nor an export ({EXPORT_INFO})")
    cfg, backbone, checkpoint = load_backbone(path)
    module = build_module(backbone, cfg.model.image_size, cfg.eval.flip)
    return Model(lambda x: module.embed_float(x)["embeddings"].numpy(), tuple(cfg.model.image_size),
                 run_threshold(path), checkpoint)


def export_info(fmt: str, image_size, embedding_size: int, flip: bool, threshold: Threshold | None,
                checkpoint: str, check: dict) -> dict:
    """The distface.json of an export: what load_model and a reader without distface need to run it."""
    return {"format": fmt, "model": MODEL_FILES[fmt] or "saved_model.pb", "image_size": list(image_size),
            "embedding_size": embedding_size,
            "input": "images: float32 [N, h, w, 3], RGB, bilinearly resized to image_size, (pixel - 127.5) / 128",
            "output": "embeddings: float32 [N, d], L2-normalised" +
                      (" (of the image's and its mirror's backbone outputs added)" if flip else ""),
            "flip": flip, "threshold": None if threshold is None else asdict(threshold),
            "checkpoint": checkpoint, "check": check}


def exported_forward(fmt: str, file: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The batch function of an exported model file (any batch size)."""
    if fmt == "savedmodel":
        import tensorflow as tf

        signature = tf.saved_model.load(str(file)).signatures["embed_float"]
        return lambda x: signature(images=tf.constant(x))["embeddings"].numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["embeddings"], {"images": x})[0]
    if fmt == "tflite":
        return _tflite_forward(file)
    raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(MODEL_FILES)}")


def _tflite_forward(file: Path) -> Callable[[np.ndarray], np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter  # the maintained TFLite runtime (LiteRT)
    except ImportError:
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(file))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def forward(x: np.ndarray) -> np.ndarray:
        # The batch dimension is dynamic (-1): resize when it changes, then run.
        if tuple(interpreter.get_input_details()[0]["shape"]) != x.shape:
            interpreter.resize_tensor_input(inp["index"], x.shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    interpreter.allocate_tensors()
    return forward

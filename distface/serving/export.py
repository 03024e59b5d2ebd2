"""distface export --checkpoint RUN_DIR --out DIR [--format savedmodel | onnx | tflite]

Writes the backbone of a run's latest complete checkpoint for serving: no head, no distface needed to run it.
Every format takes float32 images [N, h, w, 3] of the configured size, normalised as in training
((x - 127.5) / 128), with a dynamic batch dimension, and returns L2-normalised float32 embeddings [N, d], computed
as the run's evaluation computes them: with eval.flip (the default) the backbone also runs on the mirrored images
and the two outputs are added before normalising, so the run's threshold applies to the output as it is:

- savedmodel: DIR is the SavedModel; signatures `embed_float` (that input) and `serving_default` (uint8 images);
- onnx: DIR/model.onnx (tf2onnx, opset 17; runs on onnxruntime without TensorFlow);
- tflite: DIR/model.tflite (float32; runs on the LiteRT / TFLite interpreter).

Before anything is written the export is run on real images (the run's evaluation images) and compared with the
checkpoint's embeddings: the largest absolute difference is printed, and above 1e-4 the export fails. DIR also
gets distface.json: the input convention, whether the mirrored image is added, and the verification threshold
the run's last evaluation chose at FAR 1e-3 (what `distface.serving.verify` decides with).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from distface.console import add_verbose, quiet_tensorflow
from distface.models.embedder import build_module
from distface.serving.inference import EXPORT_INFO, MODEL_FILES, export_info, exported_forward, run_threshold

TOLERANCE = 1e-4  # max |difference| of a float export's embeddings from the checkpoint's
CHECK_IMAGES = 20
ONNX_OPSET = 17  # run by onnxruntime >= 1.12


class ExportCheckError(RuntimeError):
    """The exported model does not reproduce the checkpoint's embeddings."""


def export(run_dir: str | Path, out: str | Path, fmt: str = "savedmodel") -> tuple[Path, dict]:
    """Write the export atomically (a temp folder renamed into place, after the check passed); returns
    (out, its distface.json contents)."""
    from distface.training.checkpoint import load_backbone

    if fmt not in MODEL_FILES:
        raise ValueError(f"--format: one of {', '.join(MODEL_FILES)}, got {fmt!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists")
    cfg, backbone, checkpoint = load_backbone(run_dir)
    module = build_module(backbone, cfg.model.image_size, cfg.eval.flip)
    images = check_images(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        WRITERS[fmt](module, staging)
        diff = max_difference(exported_forward(fmt, staging / MODEL_FILES[fmt]),
                              lambda x: module.embed_float(x)["embeddings"].numpy(), images)
        if not diff <= TOLERANCE:
            raise ExportCheckError(f"the {fmt} export differs from the checkpoint by up to {diff:.3g} on "
                                   f"{len(images)} images (limit {TOLERANCE:g}); nothing written")
        info = export_info(fmt, cfg.model.image_size, cfg.model.embedding_size, cfg.eval.flip,
                           run_threshold(run_dir), checkpoint, {"images": len(images), "max_abs_diff": diff})
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n")
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700, which would keep a serving user out
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out, info


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def check_images(cfg) -> np.ndarray:
    """Up to CHECK_IMAGES of the run's evaluation images (its pairs file's, else its ORL identities'), spread over
    the set, preprocessed as in evaluation."""
    from distface.data.pipeline import eval_images

    if cfg.eval.pairs:
        from distface.eval.pairs import pair_image_paths, read_pairs

        first, second, _ = pair_image_paths(cfg.eval.images, read_pairs(cfg.eval.pairs))
        paths = sorted(set(first + second))
    else:
        from distface.data.orl import orl_split

        paths = list(orl_split(cfg.eval.identities).paths)
    return eval_images(paths[::max(1, len(paths) // CHECK_IMAGES)][:CHECK_IMAGES], cfg.model.image_size)


def max_difference(forward, reference, images: np.ndarray) -> float:
    """max |forward - reference| over the images, fed as a batch of 1 and a batch of the rest (the batch
    dimension must be dynamic)."""
    got = np.concatenate([forward(images[:1]), forward(images[1:])])
    return float(np.max(np.abs(got - reference(images))))


def _savedmodel(module, directory: Path) -> None:
    import tensorflow as tf

    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.embed_uint8,
                                                            "embed_float": module.embed_float})


def _onnx(module, directory: Path) -> None:
    try:
        import tf2onnx
    except ImportError:
        raise ImportError("--format onnx needs tf2onnx and onnxruntime: pip install 'distface[onnx]'") from None

    tf2onnx.convert.from_function(module.embed_float, input_signature=module.embed_float.input_signature,
                                  opset=ONNX_OPSET,
                                  output_path=str(directory / MODEL_FILES["onnx"]))


def _tflite(module, directory: Path) -> None:
    import tensorflow as tf

    from distface.ops.graphs import frozen

    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen(module.embed_float.get_concrete_function())])
    (directory / MODEL_FILES["tflite"]).write_bytes(converter.convert())


WRITERS = {"savedmodel": _savedmodel, "onnx": _onnx, "tflite": _tflite}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="distface export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run directory written by distface.train")
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--format", choices=list(MODEL_FILES), default="savedmodel", help="default: savedmodel")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        path, info = export(args.checkpoint, args.out, args.format)
    except (OSError, ValueError, ImportError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    except ExportCheckError as err:
        print(f"distface: export check failed: {err}", file=sys.stderr)
        return 1
    t = info["threshold"]
    threshold = (f"threshold: distance {t['distance']:.4f} at FAR {t['far']:g} (step {t['step']}, {t['pairs']})"
                 if t else "no threshold (the run has no evaluation with one)")
    print(f"wrote {args.format} {path} | max |embedding - checkpoint's| {info['check']['max_abs_diff']:.2e} on "
          f"{info['check']['images']} images (limit {TOLERANCE:g}) | {threshold}")
    return 0

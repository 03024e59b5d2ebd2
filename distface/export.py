"""python -m distface.export --checkpoint RUN_DIR --out DIR

Writes the backbone of a run's latest complete checkpoint as a SavedModel for TF Serving: no head, no distface
needed to load it. Signatures: `serving_default` takes uint8 images [N, h, w, 3] of the configured size,
`embed_float` takes images already normalised as in training ((x - 127.5) / 128); both return L2-normalised
float32 embeddings [N, d].
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def build_module(backbone, image_size):
    import tensorflow as tf

    h, w = image_size

    class Embedder(tf.Module):
        def __init__(self):
            super().__init__(name="distface_embedder")
            self.backbone = backbone

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])
        def embed_float(self, images):
            embeddings = tf.cast(self.backbone(images, training=False), tf.float32)
            return {"embeddings": tf.math.l2_normalize(embeddings, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")])
        def embed_uint8(self, images):
            return self.embed_float((tf.cast(images, tf.float32) - 127.5) / 128.0)

    return Embedder()


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write the SavedModel atomically (a temp folder renamed into place); returns `out`."""
    import tensorflow as tf

    from distface.checkpoint import load_backbone

    cfg, backbone, _ = load_backbone(run_dir)
    module = build_module(backbone, cfg.model.image_size)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out: {out} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.embed_uint8,
                                                              "embed_float": module.embed_float})
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distface.export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run directory written by distface.train")
    p.add_argument("--out", required=True, help="SavedModel directory to create")
    args = p.parse_args(argv)
    try:
        path = export(args.checkpoint, args.out)
    except (OSError, ValueError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    print(f"wrote SavedModel {path} (signatures: serving_default uint8, embed_float)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

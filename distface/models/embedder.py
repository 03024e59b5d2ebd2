"""A backbone as the embedding function every consumer runs: the evaluation during training, the export, and
embed/verify on a run, so that all of them compute the same embedding."""
from __future__ import annotations


def build_module(backbone, image_size, flip: bool = False):
    """The backbone as a tf.Module with two serving functions: `embed_float` takes images normalised as in training,
    `embed_uint8` takes uint8 images of the configured size; both return {"embeddings": L2-normalised [N, d]}.

    flip: the embedding of the image plus its mirror's (before normalising), as evaluation computes it with
    eval.flip (distface.eval.runner.embed), so that the run's threshold applies to the output as it is.
    """
    import tensorflow as tf

    h, w = image_size

    class Embedder(tf.Module):
        def __init__(self):
            super().__init__(name="distface_embedder")
            self.backbone = backbone

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])
        def embed_float(self, images):
            embeddings = self.backbone(images, training=False)
            if flip:
                embeddings = embeddings + self.backbone(tf.reverse(images, axis=[2]), training=False)
            return {"embeddings": tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name="images")])
        def embed_uint8(self, images):
            return self.embed_float((tf.cast(images, tf.float32) - 127.5) / 128.0)

    return Embedder()

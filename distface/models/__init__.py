"""Backbones: name -> builder(image_size, embedding_size, dropout) returning a Keras model [B,h,w,3] -> [B,d].

Embeddings are not L2-normalised here: the heads decide. The registry names "module:function" so that reading
it (config validation) does not import TensorFlow.
"""
import importlib

BACKBONES = {
    "debug": "distface.models.debug:debug_cnn",
    "sphere20": "distface.models.sphere:sphere20",
    "sphere64": "distface.models.sphere:sphere64",
}


def build_backbone(name: str, image_size, embedding_size: int, dropout: float = 0.0):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(sorted(BACKBONES))})")
    module, _, function = BACKBONES[name].partition(":")
    return getattr(importlib.import_module(module), function)(tuple(image_size), embedding_size, dropout)

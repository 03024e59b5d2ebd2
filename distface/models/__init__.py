"""Backbones: name -> builder(image_size, embedding_size, dropout) returning a Keras model [B,h,w,3] -> [B,d].

Embeddings are not L2-normalised here: the heads decide. The registry names "module:function" so that reading
it (config validation) does not import TensorFlow. DEFAULT_INPUT and DEFAULT_EMBEDDING hold each net's
published setting; any other (h, w) and d work too (Inception-ResNet-v1 needs h, w >= 75).
"""
import importlib

BACKBONES = {
    "debug": "distface.models.debug:debug_cnn",
    "sphere20": "distface.models.sphere:sphere20",
    "sphere64": "distface.models.sphere:sphere64",
    "iresnet18": "distface.models.iresnet:iresnet18",
    "iresnet34": "distface.models.iresnet:iresnet34",
    "iresnet50": "distface.models.iresnet:iresnet50",
    "iresnet100": "distface.models.iresnet:iresnet100",
    "mobilefacenet": "distface.models.mobilefacenet:mobilefacenet",
    "nn1": "distface.models.nn1:nn1",
    "inception_resnet_v1": "distface.models.inception_resnet:inception_resnet_v1",
    "lenetpp": "distface.models.lenet:lenetpp",
}

# (height, width) as the papers / reference code train them.
DEFAULT_INPUT = {
    "debug": (112, 96),
    "sphere20": (112, 96),
    "sphere64": (112, 96),
    "iresnet18": (112, 112),
    "iresnet34": (112, 112),
    "iresnet50": (112, 112),
    "iresnet100": (112, 112),
    "mobilefacenet": (112, 112),
    "nn1": (220, 220),
    "inception_resnet_v1": (160, 160),
    "lenetpp": (28, 28),
}

DEFAULT_EMBEDDING = {
    "debug": 128,
    "sphere20": 512,
    "sphere64": 512,
    "iresnet18": 512,
    "iresnet34": 512,
    "iresnet50": 512,
    "iresnet100": 512,
    "mobilefacenet": 128,
    "nn1": 128,
    "inception_resnet_v1": 512,
    "lenetpp": 2,
}


def build_backbone(name: str, image_size, embedding_size: int, dropout: float = 0.0, batchnorm_collectives=None):
    """The registered builder's model for (h, w) images and d-dimensional embeddings.

    batchnorm_collectives (model.sync_batchnorm): the engine's collectives over which BatchNorm computes its batch
    statistics (sync_batchnorm.py); with one replica the plain layer already sees the global batch and stays."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(sorted(BACKBONES))})")
    module, _, function = BACKBONES[name].partition(":")
    model = getattr(importlib.import_module(module), function)(tuple(image_size), embedding_size, dropout)
    if batchnorm_collectives is not None and batchnorm_collectives.num_replicas > 1:
        from distface.models.sync_batchnorm import synchronize_batchnorm

        model = synchronize_batchnorm(model, batchnorm_collectives)
    return model

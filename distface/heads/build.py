"""The head registry: `head.sharding` picks the model-parallel or the data-parallel head."""
from distface.config import HeadConfig
from distface.heads.classifier import ReplicatedHead
from distface.heads.sharded import ShardedHead

HEADS = {"sharded": ShardedHead, "replicated": ReplicatedHead}


def build_head(cfg: HeadConfig, runtime, num_classes: int, embedding_size: int, seed: int = 0):
    return HEADS[cfg.sharding](cfg, runtime, num_classes, embedding_size, seed)

"""Run by tests/test_reliability.py in a fresh process (so it can split the CPU into N devices): resume a run at
a given world size and write what must not depend on it: the global loss and embeddings of a fixed batch, and
the head weight and momentum (and the center-loss centers, if any) reassembled by class id."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402


def probe(run_dir: str, out: str, strategy: str, cpu_replicas: int) -> None:
    import tensorflow as tf

    from distface.training.checkpoint import load_run_config
    from distface.data.orl import orl_split
    from distface.data.pipeline import eval_images
    from equivalence import _per_replica_run, full_weight, per_replica
    from distface.training.session import Session

    cfg = load_run_config(run_dir)
    cfg.train.strategy, cfg.train.cpu_replicas = strategy, cpu_replicas if strategy == "mirrored" else 0
    session = Session(cfg, resume=True, quiet=True)
    state, engine = session.state, session.runtime
    images = eval_images(list(orl_split(range(1, 31)).paths[::38])[:8], cfg.model.image_size)
    labels = np.arange(0, 30, 4, dtype=np.int32)[:8]

    def replica_fn(x, y):
        embeddings = state.backbone(x, training=False)
        ce = state.head(engine.collectives, embeddings, y, state.step).loss
        return engine.collectives.all_reduce_sum(tf.reduce_sum(ce) / len(labels)), embeddings

    fn = tf.function(lambda x, y: _per_replica_run(engine, replica_fn, x, y))
    loss, embeddings = fn(per_replica(engine, images), per_replica(engine, labels))
    sharded = state.sharded_state()
    num_classes = session.training_set.num_classes

    def whole(var):
        return full_weight({r: c.numpy() for r, c in engine.local_components(var).items()}, num_classes)

    centers = {}
    if state.centers is not None:
        centers["centers"] = whole(state.centers) if state.sharded_centers else state.centers.numpy()
    np.savez(out, loss=loss[0].numpy(), embeddings=np.concatenate([e.numpy() for e in embeddings]),
             weight=whole(sharded["params"]["weight"]), momentum=whole(sharded["momentum"]["weight"]),
             step=int(state.step.numpy()), **centers)


if __name__ == "__main__":
    probe(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

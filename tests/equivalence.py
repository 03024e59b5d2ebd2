"""The 2-replica equivalence harness, shared by the in-process MirroredStrategy tests and the script that
horovodrun starts: a tiny model (Dense backbone -> head), a fixed global batch, and runners that return
what every test compares with the single-device computation."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from distface.config import Config
from distface.training.trainer import Trainer
from distface.training.objectives import OBJECTIVES
from distface.training.optim import Optimizer
from distface.training import schedules
from distface.training.state import TrainState

D_IN, D = 6, 8
HEADS = {  # kind -> overrides: each margin head with a non-trivial setting
    "softmax": {},
    "sphereface": {"sphere_m": 4, "lambda_base": 5.0, "lambda_min": 1.0},
    "cosface": {"m3": 0.35, "scale": 16.0},
    "arcface": {"m2": 0.5, "scale": 16.0},
    "combined": {"m1": 1.3, "m2": 0.2, "m3": 0.1, "scale": 16.0},
}


def make_config(kind: str, per_replica_batch: int, sharding: str, center_weight: float = 0.0,
                label_smoothing: float = 0.0, clip_norm: float = 0.0, center_sharding: str = "replicated") -> Config:
    cfg = Config()
    cfg.head.type, cfg.head.sharding = kind, sharding
    cfg.head.m1, cfg.head.m2, cfg.head.m3 = 1.0, 0.0, 0.0
    for key, value in HEADS[kind].items():
        setattr(cfg.head, key, value)
    cfg.data.batch_size = per_replica_batch
    cfg.model.embedding_size = D
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule = 0.1, 0, "constant"
    cfg.optim.clip_norm = clip_norm
    cfg.loss.center_weight, cfg.loss.label_smoothing = center_weight, label_smoothing
    cfg.loss.center_sharding = center_sharding
    return cfg


def make_problem(num_classes: int, global_batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(x=rng.normal(size=(global_batch, D_IN)).astype(np.float32),
                labels=rng.integers(0, num_classes, size=global_batch).astype(np.int32),
                weight=rng.normal(size=(num_classes, D)).astype(np.float32),
                kernel=rng.normal(size=(D_IN, D)).astype(np.float32) * 0.5,
                bias=rng.normal(size=(D,)).astype(np.float32) * 0.1)


def per_replica(engine, array: np.ndarray):
    """This engine's per-replica slices of a global batch (replica r gets rows [r*b, (r+1)*b))."""
    b = len(array) // engine.num_replicas
    strategy = getattr(engine, "strategy", None)
    if strategy is not None:
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * b:(ctx.replica_id_in_sync_group + 1) * b]))
    return tf.constant(array[engine.process_index * b:(engine.process_index + 1) * b])


def build(engine, cfg: Config, problem: dict, total_steps: int = 100) -> Trainer:
    num_classes = len(problem["weight"])
    with engine.scope():
        backbone = tf.keras.Sequential([tf.keras.Input((D_IN,)), tf.keras.layers.Dense(D)])
    backbone.layers[0].kernel.assign(problem["kernel"])
    backbone.layers[0].bias.assign(problem["bias"])
    objective = OBJECTIVES[cfg.loss.type](cfg, engine, num_classes)
    head = objective.head
    if head is None:
        pass
    elif head.sharded:
        block = head.block_size
        padded = np.zeros((block * engine.num_replicas, D), np.float32)
        padded[:num_classes] = problem["weight"]
        for replica, component in engine.local_components(head.weight).items():
            component.assign(padded[replica * block:(replica + 1) * block])
    else:
        head.weight.assign(problem["weight"])
    state = TrainState(engine, backbone, objective)
    optimizer = Optimizer(cfg.optim, total_steps, engine, schedules.global_batch(cfg, engine.num_replicas))
    return Trainer(cfg, engine, state, objective, optimizer)


def loss_and_grads(trainer: Trainer, problem: dict) -> dict:
    """Global loss, d loss / d embeddings (own rows), d loss / d head weight (own block), per local replica."""
    engine, state = trainer.runtime, trainer.state

    def replica_fn(x, labels):
        with tf.GradientTape() as tape:
            embeddings = state.backbone(x, training=True)
            tape.watch(embeddings)
            out = state.head(engine.collectives, embeddings, labels, state.step, trainer.cfg.loss.label_smoothing)
            ce, degrees = out.loss, out.target_degrees
            loss = tf.reduce_sum(ce) / trainer.global_batch
        d_emb, d_weight = tape.gradient(loss, [embeddings, state.head.weight])
        return engine.collectives.all_reduce_sum(loss), d_emb, d_weight, degrees

    fn = tf.function(lambda x, labels: _per_replica_run(engine, replica_fn, x, labels))
    loss, d_emb, d_weight, degrees = fn(per_replica(engine, problem["x"]), per_replica(engine, problem["labels"]))
    return dict(loss=loss[0].numpy(), d_emb=[t.numpy() for t in d_emb], d_weight=[t.numpy() for t in d_weight],
                degrees=[t.numpy() for t in degrees])


def _per_replica_run(engine, fn, *args):
    strategy = getattr(engine, "strategy", None)
    out = strategy.run(fn, args=args) if strategy is not None else fn(*args)
    return tf.nest.map_structure(engine.local_results, out)


def train(trainer: Trainer, problem: dict, steps: int = 3) -> dict:
    """Parameters after `steps` identical training steps on the fixed batch."""
    engine, state = trainer.runtime, trainer.state
    x, labels = per_replica(engine, problem["x"]), per_replica(engine, problem["labels"])
    for _ in range(steps):
        trainer.train_step(x, labels)
    out = dict(kernel=state.backbone.layers[0].kernel.numpy(), bias=state.backbone.layers[0].bias.numpy(),
               weight_blocks={r: c.numpy() for r, c in engine.local_components(state.head.weight).items()})
    if state.sharded_centers:
        out["center_blocks"] = {r: c.numpy() for r, c in engine.local_components(state.centers).items()}
    elif state.centers is not None:
        out["centers"] = state.centers.numpy()
    return out


def objective_loss_and_grads(trainer: Trainer, problem: dict) -> dict:
    """The objective's whole loss (head + center loss) and its center loss on the fixed batch, summed over
    replicas; d loss / d embeddings (own rows) and d loss / d kernel (reduced like the backbone's), per local
    replica."""
    engine, state = trainer.runtime, trainer.state
    kernel = state.backbone.layers[0].kernel

    def replica_fn(x, labels):
        with tf.GradientTape() as tape:
            embeddings = state.backbone(x, training=True)
            loss, metrics, _ = trainer.objective.loss(engine.collectives, embeddings, labels, state.step,
                                                   trainer.global_batch)
        d_emb, d_kernel = tape.gradient(loss, [embeddings, kernel])
        totals = engine.collectives.all_reduce_sum(tf.stack([loss, metrics.ratios["loss/center"][0]]))
        return totals, d_emb, engine.reduce_gradients([d_kernel])[0]

    fn = tf.function(lambda x, labels: _per_replica_run(engine, replica_fn, x, labels))
    totals, d_emb, d_kernel = fn(per_replica(engine, problem["x"]), per_replica(engine, problem["labels"]))
    return dict(loss=totals[0][0].numpy(), center_loss=totals[0][1].numpy(), d_emb=[t.numpy() for t in d_emb],
                d_kernel=[t.numpy() for t in d_kernel])


def full_weight(blocks: dict, num_classes: int) -> np.ndarray:
    """Concatenate head blocks in replica order and drop the padding rows."""
    return np.concatenate([blocks[r] for r in sorted(blocks)])[:num_classes]

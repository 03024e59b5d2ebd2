"""Cross-replica semi-hard mining on 2 MirroredStrategy replicas == the single-device loss on the concatenated
batch (value and gradients); mining only the local batch differs when the hardest negative is elsewhere."""
import numpy as np
import pytest
import tensorflow as tf

from equivalence import build, make_config, make_problem
from distface.losses.triplet import triplet_loss_mean
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine


@pytest.fixture(scope="module")
def mirrored():
    return mirrored_engine(cpu_replicas=2)


def triplet_trainer(engine, per_replica_batch, cross_replica=True, **loss):
    cfg = make_config("softmax", per_replica_batch, "replicated")
    cfg.loss.type, cfg.loss.triplet_cross_replica = "triplet", cross_replica
    for key, value in loss.items():
        setattr(cfg.loss, f"triplet_{key}", value)
    return build(engine, cfg, make_problem(4, 2 * per_replica_batch))


def run_objective(engine, trainer, embeddings, labels):
    """Global loss and d loss / d embeddings (rows in global order) of the trainer's triplet objective."""
    b = len(embeddings) // engine.num_replicas

    def replica_fn(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, _, _ = trainer.objective.loss(engine.collectives, x, y, trainer.state.step, trainer.global_batch)
        return engine.collectives.all_reduce_sum(loss), tape.gradient(loss, x)

    if engine.num_replicas == 1:
        loss, grad = tf.function(replica_fn)(tf.constant(embeddings), tf.constant(labels))
        return loss.numpy(), grad.numpy()
    split = lambda a: engine.strategy.experimental_distribute_values_from_function(  # noqa: E731
        lambda ctx: tf.constant(a[ctx.replica_id_in_sync_group * b:(ctx.replica_id_in_sync_group + 1) * b]))
    loss, grad = tf.function(lambda x, y: engine.strategy.run(replica_fn, args=(x, y)))(
        split(embeddings), split(labels))
    return engine.local_results(loss)[0].numpy(), np.concatenate([g.numpy() for g in engine.local_results(grad)])


@pytest.mark.parametrize("mining, distance", [("semi_hard", "squared_l2"), ("semi_hard", "angular"),
                                              ("batch_hard", "l2")])
def test_cross_replica_mining_equals_single_device(mirrored, mining, distance):
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(16, 8)).astype(np.float32)
    labels = np.repeat(np.arange(4), 4).astype(np.int32)
    rng.shuffle(labels)  # positives of an anchor sit on both replicas
    kwargs = dict(mining=mining, distance=distance)
    single = run_objective(SingleEngine(), triplet_trainer(SingleEngine(), 16, **kwargs), embeddings, labels)
    dist = run_objective(mirrored, triplet_trainer(mirrored, 8, **kwargs), embeddings, labels)
    normalized = tf.math.l2_normalize(embeddings, axis=1)
    reference = triplet_loss_mean(normalized, labels, margin=0.2, distance=distance, mining=mining).numpy()
    assert reference > 0
    np.testing.assert_allclose(single[0], reference, rtol=1e-6)
    np.testing.assert_allclose(dist[0], single[0], rtol=1e-5)
    np.testing.assert_allclose(dist[1], single[1], rtol=1e-5, atol=1e-7)


def test_local_only_mining_misses_the_other_replicas_negative(mirrored):
    """Replica 0 holds anchors of classes 0 and 1; the negative closest to class 0 sits on replica 1."""
    e = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [-0.8, -0.6],    # replica 0: class 0, 0, 1, 1
                  [0.75, -0.661], [0.7, -0.714], [-0.6, 0.8], [-0.5, 0.866]],  # replica 1: 2, 2, 3, 3
                 dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
    cross = run_objective(mirrored, triplet_trainer(mirrored, 4, cross_replica=True), e, labels)
    local = run_objective(mirrored, triplet_trainer(mirrored, 4, cross_replica=False), e, labels)
    single = run_objective(SingleEngine(), triplet_trainer(SingleEngine(), 8), e, labels)
    np.testing.assert_allclose(cross[0], single[0], rtol=1e-5)
    # Only the cross-replica pool holds the semi-hard negative of the pair (e0, e1): 0.4 - 0.5 + 0.2 = 0.1.
    assert local[0] == 0.0 and cross[0] > 0.01, (local[0], cross[0])

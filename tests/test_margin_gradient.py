"""head.margin_gradient: straight_through against a float64 numpy transcription of insightface arcface_torch's
CombinedMarginLoss; exact against the target formula's own derivative; the sharded head (and Partial FC) on 2
replicas against one device; the config key."""
import math

import numpy as np
import pytest
import tensorflow as tf

from equivalence import full_weight, per_replica
from distface.config import ConfigError, HeadConfig, parse_config
from distface.heads import margins as M
from distface.heads.classifier import ReplicatedHead
from distface.heads.sharded import ShardedHead, block_labels
from distface.losses.cross_entropy import margin_softmax_cross_entropy
from distface.parallel.single import SingleCollectives, SingleEngine
from distface.parallel.tfdist import mirrored_engine

B, C, D = 8, 6, 5
STEP = tf.constant(0, tf.int64)


# ---------------------------------------------------------------- float64 references
def arcface_torch_logits(cos, labels, s, m1, m2, m3):
    """The forward of CombinedMarginLoss(s, m1, m2, m3) (insightface recognition/arcface_torch/losses.py, no
    interclass filtering), on numpy. Its arcface branch runs under torch.no_grad(); its cosface branch is linear
    in the cosine: either way the gradient wrt the cosines is that of s·cos θ."""
    logits = np.array(cos, np.float64)
    rows = np.flatnonzero(labels != -1)
    cols = labels[rows]
    if m1 == 1.0 and m3 == 0.0:
        theta = np.arccos(np.clip(logits, -1.0, 1.0))  # torch's arccos_ has no clip: |cos| <= 1 here anyway
        theta[rows, cols] += m2
        return np.cos(theta) * s
    if m3 > 0:
        logits[rows, cols] -= m3
        return logits * s
    raise ValueError("CombinedMarginLoss supports m1 == 1 with m3 == 0 (ArcFace) or m3 > 0 (CosFace)")


def reference_logits(cos, labels, s, m2, m3):
    """arcface_torch's two branches in turn: cos(θ + m2) - m3 on the target (combined with m1 == 1). arcface_torch
    itself takes one branch (m2 is ignored when m3 > 0); with one of m2, m3 zero this is its forward."""
    logits = arcface_torch_logits(cos, labels, s, 1.0, m2, 0.0) if m2 else np.array(cos, np.float64) * s
    if m3:
        logits -= s * m3 * (labels[:, None] == np.arange(cos.shape[1]))
    return logits


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z, labels):
    rows = np.arange(len(z))
    return np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1) - z[rows, labels]


def onehot(labels, c):
    return (labels[:, None] == np.arange(c)).astype(np.float64)


def through_normalisation(g, v):
    """d/dv of a function of v/|v| whose gradient wrt v/|v| is g (rows)."""
    n = np.linalg.norm(v, axis=1, keepdims=True)
    u = v / n
    return (g - (g * u).sum(axis=1, keepdims=True) * u) / n


def embedding_and_weight_gradients(d_cos, x, w):
    """d loss / d x and d loss / d w from d loss / d cos, cos = (x / |x|)(w / |w|)ᵀ."""
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    wu = w / np.linalg.norm(w, axis=1, keepdims=True)
    return through_normalisation(d_cos @ wu, x), through_normalisation(d_cos.T @ xu, w)


def make_problem(seed, c=C, labels=None, past_pi=(1, 4)):
    """Embeddings, weights (float32 values, as float64) and labels (random unless given); rows `past_pi` point
    away from their class, so their target angle is beyond π - 0.5."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(c, D))
    labels = rng.integers(0, c, B) if labels is None else np.array(labels)
    x = rng.normal(size=(B, D))
    for i in past_pi:
        x[i] = -2.0 * w[labels[i]] / np.linalg.norm(w[labels[i]]) + 0.1 * rng.normal(size=D)
    return x.astype(np.float32).astype(np.float64), w.astype(np.float32).astype(np.float64), labels


def cosines(x, w):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


# ---------------------------------------------------------------- distface
def head_config(kind, margin_gradient="straight_through", **params) -> HeadConfig:
    cfg = HeadConfig(type=kind, m1=1.0, m2=0.0, m3=0.0, margin_gradient=margin_gradient)
    for key, value in params.items():
        setattr(cfg, key, value)
    return cfg


def replicated_head_run(cfg, x, w, labels, step=STEP):
    """Mean loss over the batch and its gradients wrt the embeddings and the weights, on one device."""
    head = ReplicatedHead(cfg, SingleEngine(), len(w), D)
    head.weight.assign(w.astype(np.float32))
    embeddings = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss = tf.reduce_sum(head(SingleCollectives(), embeddings, tf.constant(labels), step).loss) / len(x)
    d_x, d_w = tape.gradient(loss, [embeddings, head.weight])
    return loss.numpy(), d_x.numpy(), tf.convert_to_tensor(d_w).numpy()


def fused_run(margin, cos, labels, norms, step=STEP):
    """Per-example loss, d(Σ loss)/d cos and d(Σ loss)/d norms of the fused loss on given cosines."""
    cos, norms = tf.constant(cos, tf.float32), tf.constant(norms, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([cos, norms])
        loss = margin_softmax_cross_entropy(SingleCollectives(), cos, tf.constant(labels), margin.parts(norms, step),
                                            cos.shape[1])
        total = tf.reduce_sum(loss)
    d_cos, d_norms = tape.gradient(total, [cos, norms], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return loss.numpy(), d_cos.numpy(), d_norms.numpy()


# ---------------------------------------------------------------- (a) against arcface_torch
TORCH_CASES = [  # distface head config -> CombinedMarginLoss's (s, m2, m3), m1 = 1
    (dict(kind="arcface", scale=64.0, m2=0.5), (64.0, 0.5, 0.0)),
    (dict(kind="cosface", scale=64.0, m3=0.35), (64.0, 0.0, 0.35)),
    (dict(kind="combined", scale=64.0, m2=0.5), (64.0, 0.5, 0.0)),
    (dict(kind="combined", scale=32.0, m3=0.4), (32.0, 0.0, 0.4)),
    (dict(kind="combined", scale=64.0, m2=0.3, m3=0.2), (64.0, 0.3, 0.2)),
]


@pytest.mark.parametrize("params,torch_args", TORCH_CASES, ids=[f"{p['kind']}{i}" for i, (p, _) in
                                                                enumerate(TORCH_CASES)])
def test_straight_through_matches_arcface_torch(params, torch_args):
    x, w, labels = make_problem(seed=3)
    s, m2, m3 = torch_args
    cos = cosines(x, w)
    theta_y = np.arccos(cos[np.arange(B), labels])
    assert m2 == 0 or (theta_y + m2 > math.pi).sum() >= 2  # past π, where exact mode takes its fallback
    z = reference_logits(cos, labels, s, m2, m3)
    want_loss = cross_entropy(z, labels).mean()
    d_cos = s * (softmax(z) - onehot(labels, C)) / B  # the plain logits' gradient at the margin's softmax
    want_dx, want_dw = embedding_and_weight_gradients(d_cos, x, w)

    loss, d_x, d_w = replicated_head_run(head_config(**params), x, w, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(d_x, want_dx, rtol=1e-4, atol=1e-5 * np.abs(want_dx).max())
    np.testing.assert_allclose(d_w, want_dw, rtol=1e-4, atol=1e-5 * np.abs(want_dw).max())

    kwargs = {k: v for k, v in params.items() if k != "kind"}
    margin = M.make_margin(params["kind"], **kwargs, margin_gradient="straight_through")
    got_loss, got_dcos, _ = fused_run(margin, cos, labels, np.ones(B))
    np.testing.assert_allclose(got_loss, cross_entropy(z, labels), rtol=1e-5)
    np.testing.assert_allclose(got_dcos, d_cos * B, rtol=1e-4, atol=1e-5 * s)


def test_arcface_target_without_fallback_is_cos_theta_plus_m():
    """arcface_torch's cos(θ + m) on the whole range, θ from the clipped cosine, past π - m too."""
    m = 0.5
    c = np.linspace(-0.999, 0.999, 2001).astype(np.float32)
    margin = M.make_margin("arcface", scale=1.0, m2=m, margin_gradient="straight_through")
    got = margin(tf.constant(c[:, None]), tf.zeros([len(c)], tf.int32), None, STEP).numpy()[:, 0]
    want = np.cos(np.arccos(np.clip(c.astype(np.float64), -1.0, 1.0)) + m)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert (c < math.cos(math.pi - m)).sum() > 100  # the range exact mode gives to its fallback


PER_KIND = [("normface", dict(scale=16.0)), ("modified_softmax", {}),
            ("sphereface", dict(sphere_m=4, lambda_base=5.0, lambda_min=1.0)), ("cosface", dict(scale=64.0, m3=0.35)),
            ("arcface", dict(scale=64.0, m2=0.5)), ("arcface", dict(scale=64.0, m2=0.5, easy_margin=True)),
            ("combined", dict(scale=32.0, m1=1.3, m2=0.2, m3=0.1))]


@pytest.mark.parametrize("kind,params", PER_KIND, ids=[f"{k}{i}" for i, (k, _) in enumerate(PER_KIND)])
def test_every_kind_keeps_the_margin_forward_and_the_plain_backward(kind, params):
    """Away from ArcFace's fallback both settings give the same logits; straight-through's gradient is the plain
    logits' (row scale · (softmax − onehot), and Σ_j (softmax − onehot)_j c_j wrt a per-row scale). A row with
    label −1 (its target in another block) included."""
    rng = np.random.default_rng(5)
    cos = rng.uniform(-0.8, 0.95, (B, C)).astype(np.float32)
    norms = rng.uniform(0.5, 4.0, B).astype(np.float32)
    labels = rng.integers(0, C, B)
    labels[0] = -1
    exact = M.make_margin(kind, **params)
    straight = M.make_margin(kind, **params, margin_gradient="straight_through")
    z = exact(tf.constant(cos), tf.constant(labels), tf.constant(norms), STEP).numpy().astype(np.float64)
    residual = softmax(z) - onehot(labels, C)
    per_row = kind in ("modified_softmax", "sphereface")
    row_scale = norms[:, None].astype(np.float64) if per_row else params["scale"]

    want_loss, _, _ = fused_run(exact, cos, labels, norms)
    loss, d_cos, d_norms = fused_run(straight, cos, labels, norms)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(d_cos, row_scale * residual, rtol=1e-5, atol=1e-6 * np.max(row_scale))
    want_dn = (residual * cos).sum(axis=1) if per_row else np.zeros(B)
    np.testing.assert_allclose(d_norms, want_dn, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- (b) exact mode
def test_exact_mode_differentiates_the_margin():
    """Exact (the default) against d/dc of insightface's ArcFace with its fallback: s·sin(θ + m)/sin θ, and s past
    π − m; straight-through differs there, at the targets."""
    x, w, labels = make_problem(seed=3)
    s, m = 64.0, 0.5
    cos = cosines(x, w)
    c_y = cos[np.arange(B), labels]
    past = c_y <= math.cos(math.pi - m)
    assert past.sum() >= 2
    theta = np.arccos(c_y)
    target = np.where(past, c_y - m * math.sin(m), np.cos(theta + m))
    slope = np.where(past, 1.0, np.sin(theta + m) / np.sin(theta))
    z = s * cos
    z[np.arange(B), labels] = s * target
    residual = softmax(z) - onehot(labels, C)
    d_cos = s * residual
    d_cos[np.arange(B), labels] *= slope
    d_cos /= B
    want_dx, want_dw = embedding_and_weight_gradients(d_cos, x, w)

    loss, d_x, d_w = replicated_head_run(HeadConfig(type="arcface", scale=s, m2=m), x, w, labels)
    np.testing.assert_allclose(loss, cross_entropy(z, labels).mean(), rtol=1e-5)
    np.testing.assert_allclose(d_x, want_dx, rtol=1e-4, atol=1e-5 * np.abs(want_dx).max())
    np.testing.assert_allclose(d_w, want_dw, rtol=1e-4, atol=1e-5 * np.abs(want_dw).max())

    straight = replicated_head_run(head_config("arcface", scale=s, m2=m), x, w, labels)
    assert np.abs(straight[1] - d_x).max() > 0.1 * np.abs(d_x).max()


def test_without_margin_both_settings_are_normface():
    """Before the warm-up starts there is no margin: both settings give normalised softmax, value and gradient."""
    x, w, labels = make_problem(seed=4)
    runs = [replicated_head_run(head_config("combined", gradient, scale=16.0, m1=1.0, m2=0.5, m3=0.2,
                                            margin_warmup_start=5), x, w, labels, step=tf.constant(2, tf.int64))
            for gradient in ("exact", "straight_through")]
    normface = replicated_head_run(head_config("normface", "exact", scale=16.0), x, w, labels)
    for run in runs:
        for got, want in zip(run, normface):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- (c) sharded head
@pytest.fixture(scope="module")
def mirrored():
    return mirrored_engine(cpu_replicas=2)


def sharded_run(engine, cfg, x, w, labels):
    """Global mean loss, d loss / d embeddings (global rows) and the weight blocks' gradients (full [C, D])."""
    head = ShardedHead(cfg, engine, len(w), D)
    padded = np.zeros((head.block_size * engine.num_replicas, D), np.float32)
    padded[:len(w)] = w
    for replica, component in engine.local_components(head.weight).items():
        component.assign(padded[replica * head.block_size:(replica + 1) * head.block_size])

    def replica_fn(embeddings, y):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = tf.reduce_sum(head(engine.collectives, embeddings, y, STEP).loss) / len(x)
        d_x, d_w = tape.gradient(loss, [embeddings, head.weight])
        return engine.collectives.all_reduce_sum(loss), d_x, tf.convert_to_tensor(d_w)

    run = tf.function(lambda e, y: engine.strategy.run(replica_fn, args=(e, y)))
    loss, d_x, d_w = (engine.local_results(t) for t in run(per_replica(engine, x.astype(np.float32)),
                                                           per_replica(engine, labels.astype(np.int32))))
    d_w = full_weight({r: t.numpy() for r, t in enumerate(d_w)}, len(w))
    return loss[0].numpy(), np.concatenate([t.numpy() for t in d_x]), d_w, head


def assert_same(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


SHARDED = [dict(kind="arcface", scale=16.0, m2=0.5), dict(kind="cosface", scale=16.0, m3=0.35),
           dict(kind="combined", scale=16.0, m1=1.3, m2=0.2, m3=0.1),
           dict(kind="sphereface", sphere_m=4, lambda_base=5.0, lambda_min=1.0)]


@pytest.mark.parametrize("params", SHARDED, ids=[p["kind"] for p in SHARDED])
def test_sharded_head_on_two_replicas_equals_one_device(mirrored, params):
    """9 classes: blocks of 5 (the last padded), targets in both; rows past π − m included."""
    x, w, labels = make_problem(seed=6, c=9, labels=[0, 6, 3, 8, 1, 5, 7, 2])
    cfg = head_config(**params)
    loss, d_x, d_w, _ = sharded_run(mirrored, cfg, x, w, labels)
    assert_same((loss, d_x, d_w), replicated_head_run(cfg, x, w, labels))


def test_partial_fc_on_two_replicas_equals_one_device_on_the_kept_classes(mirrored):
    """sample_rate 0.5 over 20 classes: each block of 10 keeps its positives plus random others, 5 in all. One
    device classifying over the union of the kept classes is the reference."""
    x, w, labels = make_problem(seed=8, c=20, labels=[0, 13, 3, 17, 0, 13, 3, 11], past_pi=(1,))
    cfg = head_config("arcface", scale=16.0, m2=0.5, sample_rate=0.5)
    loss, d_x, d_w, head = sharded_run(mirrored, cfg, x, w, labels)
    valid = tf.ones([head.block_size], tf.bool)
    kept = np.concatenate([
        r * head.block_size + head._sample(block_labels(tf.constant(labels), r * head.block_size, head.block_size),
                                           valid, STEP, tf.constant(r))[0].numpy() for r in range(2)])
    assert len(kept) == 10 and len(set(kept) - set(labels)) == 5  # random negatives in the softmax
    want_loss, want_dx, want_dw = replicated_head_run(cfg, x, w[kept], np.searchsorted(kept, labels))
    full_dw = np.zeros_like(w)
    full_dw[kept] = want_dw
    assert_same((loss, d_x, d_w), (want_loss, want_dx, full_dw))


# ---------------------------------------------------------------- (d) config
def test_config_key():
    assert parse_config(None, ["head.margin_gradient=straight_through"]).head.margin_gradient == "straight_through"
    with pytest.raises(ConfigError) as err:
        parse_config(None, ["head.margin_gradient=straight"])
    message = str(err.value)
    assert message.startswith("head.margin_gradient:") and "\n" not in message
    with pytest.raises(ValueError, match="margin gradient 'straight'"):
        M.make_margin("arcface", margin_gradient="straight")

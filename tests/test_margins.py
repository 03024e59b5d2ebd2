"""distface.heads.margins against numpy float64 references written from the published formulas."""
import math

import numpy as np
import pytest
import tensorflow as tf

from distface.heads import margins as M

SPECIAL = np.array([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0])
# Largest target-angle error the clip may cause at cos θ = ±1 (the clipped cosine is rounded to float32).
CLIP_ANGLE = float(np.arccos(np.float64(np.float32(1.0 - M.EPS))))
CASES = [(12, 5), (7, 1), (4, 9)]  # (B, C): C < B, C = 1, C > B


# ---------------------------------------------------------------- independent float64 references
def ref_arc(c, m, easy_margin=False):
    cos_tm = np.cos(np.arccos(np.clip(c, -1.0, 1.0)) + m)
    if easy_margin:
        return np.where(c > 0, cos_tm, c)
    return np.where(c > np.cos(np.pi - m), cos_tm, c - m * np.sin(m))


def ref_psi(phi):
    k = np.floor(phi / np.pi)
    return (-1.0) ** k * np.cos(phi) - 2.0 * k


def ref_sphere_psi(c, m):
    """ψ(θ) for integer m without acos: Chebyshev cos mθ = T_m(c); k from c against cos(jπ/m)."""
    cos_m = np.polynomial.chebyshev.chebval(c, [0.0] * m + [1.0])
    k = sum((c <= np.cos(j * np.pi / m)).astype(np.float64) for j in range(1, m))
    return (-1.0) ** k * cos_m - 2.0 * k


def ref_target(kind, c, norms, p):
    """Target logit for cosine c (any shape; norms broadcast with c)."""
    if kind == "cosface":
        return p["scale"] * (c - p["margin"])
    if kind == "arcface":
        return p["scale"] * ref_arc(c, p["margin"], p.get("easy_margin", False))
    if kind == "sphereface":
        lam = p["lam"]
        return (lam * norms * c + norms * ref_sphere_psi(c, p["m"])) / (1.0 + lam)
    if kind == "combined":
        m1, m2, m3 = p["m1"], p["m2"], p["m3"]
        psi = ref_arc(c, m2) if m1 == 1 else ref_psi(m1 * np.arccos(np.clip(c, -1.0, 1.0)) + m2)
        return p["scale"] * (psi - m3)
    raise AssertionError(kind)


def ref_logits(kind, cos, labels, norms, p):
    cos = np.asarray(cos, np.float64)
    n = np.asarray(norms, np.float64)[:, None]
    if kind in ("modified_softmax", "sphereface"):
        out = n * cos
    else:
        out = p.get("scale", 1.0) * cos
    if kind in ("normface", "modified_softmax"):
        return out
    target = ref_target(kind, cos, n, p)
    hit = labels[:, None] == np.arange(cos.shape[1])[None, :]
    return np.where(hit, target, out)


def call(kind, cos, labels, norms, p):
    fn = getattr(M, kind)
    args = (cos, labels, norms) if kind in ("modified_softmax", "sphereface") else (cos, labels)
    return fn(*args, **p)


def slope(kind, p, norms):
    """Upper bound on |d target / d θ|, for the clip tolerance."""
    if kind == "sphereface":
        return np.asarray(norms)[:, None] * p["m"]
    return p.get("scale", 1.0) * p.get("m1", 1.0)


KINDS = [
    ("normface", {"scale": 30.0}),
    ("modified_softmax", {}),
    ("sphereface", {"m": 4, "lam": 0.0}),
    ("sphereface", {"m": 4, "lam": 5.0}),
    ("sphereface", {"m": 1, "lam": 0.0}),
    ("sphereface", {"m": 2, "lam": 0.0}),
    ("sphereface", {"m": 3, "lam": 1.5}),
    ("cosface", {"scale": 64.0, "margin": 0.35}),
    ("arcface", {"scale": 64.0, "margin": 0.5}),
    ("arcface", {"scale": 64.0, "margin": 0.5, "easy_margin": True}),
    ("arcface", {"scale": 30.0, "margin": 0.0}),
    ("combined", {"scale": 64.0, "m1": 1.0, "m2": 0.5, "m3": 0.0}),
    ("combined", {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ("combined", {"scale": 64.0, "m1": 2.0, "m2": 0.0, "m3": 0.0}),
    ("combined", {"scale": 64.0, "m1": 4.0, "m2": 0.0, "m3": 0.0}),
    ("combined", {"scale": 32.0, "m1": 1.35, "m2": 0.25, "m3": 0.1}),
    ("combined", {"scale": 32.0, "m1": 3.0, "m2": 0.2, "m3": 0.1}),
]
KIND_IDS = [f"{k}-{'-'.join(f'{v}' for v in p.values())}" for k, p in KINDS]


def make_case(seed, b, c):
    """Random cosines with boundary values sprinkled in and put on the targets; labels include -1."""
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1.0, 1.0, (b, c))
    sprinkle = rng.random((b, c)) < 0.3
    cos[sprinkle] = rng.choice(SPECIAL, sprinkle.sum())
    labels = rng.integers(-1, c, b)
    labels[0], labels[1] = -1, 0
    for i in np.flatnonzero(labels >= 0):
        cos[i, labels[i]] = SPECIAL[i % len(SPECIAL)]
    norms = rng.uniform(0.5, 40.0, b)
    return cos.astype(np.float32), labels.astype(np.int32), norms.astype(np.float32)


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("kind,p", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("b,c", CASES)
def test_values_match_reference(kind, p, b, c):
    cos, labels, norms = make_case(b * 100 + c, b, c)
    got = call(kind, tf.constant(cos), tf.constant(labels), tf.constant(norms), p)
    assert got.dtype == tf.float32 and got.shape == (b, c)
    got = got.numpy().astype(np.float64)
    want = ref_logits(kind, cos, labels, norms, p)
    tol = 2e-5 * np.maximum(1.0, np.abs(want))
    # The clip moves the target angle by at most CLIP_ANGLE, and only where |cos θ| > 1 - EPS.
    clipped = (labels[:, None] == np.arange(c)) & (np.abs(cos) > 1.0 - M.EPS)
    tol = tol + clipped * slope(kind, p, norms) * CLIP_ANGLE * 1.01
    bad = np.abs(got - want) > tol
    assert not bad.any(), f"{kind} {p}: got {got[bad]} want {want[bad]} at cos {cos[bad]}"


def test_int64_labels_and_boundary_targets_change():
    cos = tf.constant([[1.0, -1.0], [-1.0, 1.0], [0.999, 0.5]])
    labels = tf.constant([0, 0, -1], tf.int64)
    got = M.arcface(cos, labels, scale=64.0, margin=0.5).numpy()
    np.testing.assert_allclose(got[0, 0], 64 * math.cos(0.5), atol=64 * CLIP_ANGLE)
    np.testing.assert_allclose(got[1, 0], 64 * (-1 - 0.5 * math.sin(0.5)), rtol=1e-6)
    np.testing.assert_array_equal(got[2], 64 * cos.numpy()[2])  # -1 row: untouched
    np.testing.assert_array_equal(got[:2, 1], 64 * cos.numpy()[:2, 1])


# ---------------------------------------------------------------- gradients
GRAD_KINDS = [(k, p) for k, p in KINDS if k != "normface"]
GRAD_IDS = [i for i, (k, _) in zip(KIND_IDS, KINDS) if k != "normface"]


def interior_case(seed, kind, p, b=6, c=5):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.95, 0.95, (b, c))
    # keep away from the jumps of ArcFace's fallback (θ = π - m) and of the easy margin (cos θ = 0)
    jumps = [0.0] if p.get("easy_margin") else []
    if kind == "arcface" or (kind == "combined" and p["m1"] == 1):
        m = p.get("margin", p.get("m2"))
        jumps.append(math.cos(math.pi - m))
    for jump in jumps:
        cos = np.where(np.abs(cos - jump) < 0.02, cos + 0.05, cos)
    labels = rng.integers(-1, c, b)
    labels[0], labels[1] = -1, 2
    return cos, labels.astype(np.int32), rng.uniform(0.5, 4.0, b), rng.normal(size=(b, c))


@pytest.mark.parametrize("kind,p", GRAD_KINDS, ids=GRAD_IDS)
def test_gradients_match_finite_differences(kind, p):
    cos, labels, norms, w = interior_case(7, kind, p)
    x, n = tf.constant(cos, tf.float32), tf.constant(norms, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x, n])
        loss = tf.reduce_sum(tf.constant(w, tf.float32) * call(kind, x, labels, n, p))
    gx, gn = tape.gradient(loss, [x, n])
    # float64 references on the float32-rounded inputs; logit[i, j] depends only on cos[i, j] and n[i]
    cos64, n64 = (a.astype(np.float32).astype(np.float64) for a in (cos, norms))
    h = 1e-6
    fd_x = w * (ref_logits(kind, cos64 + h, labels, n64, p)
                - ref_logits(kind, cos64 - h, labels, n64, p)) / (2 * h)
    np.testing.assert_allclose(gx.numpy(), fd_x, rtol=1e-4, atol=1e-3)
    if kind in ("modified_softmax", "sphereface"):
        fd_n = (w * (ref_logits(kind, cos64, labels, n64 + h, p)
                     - ref_logits(kind, cos64, labels, n64 - h, p))).sum(1) / (2 * h)
        np.testing.assert_allclose(gn.numpy(), fd_n, rtol=1e-4, atol=1e-3)


CONFIGS = [
    dict(kind="softmax"),
    dict(kind="normface", scale=30.0),
    dict(kind="modified_softmax"),
    dict(kind="sphereface", sphere_m=4),
    dict(kind="cosface", scale=64.0, m3=0.35),
    dict(kind="arcface", scale=64.0, m2=0.5),
    dict(kind="arcface", scale=64.0, m2=0.5, easy_margin=True),
    dict(kind="combined", scale=64.0, m1=1.0, m2=0.3, m3=0.2),
    dict(kind="combined", scale=64.0, m1=4.0),
    dict(kind="combined", scale=64.0, m1=1.35, m2=0.25, m3=0.1, warmup_start=2, warmup_steps=10),
    dict(kind="combined", scale=64.0, m1=3.0, m2=0.2, m3=0.1),
]


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c['kind']}{i}" for i, c in enumerate(CONFIGS)])
def test_boundaries_finite_in_low_precision(config, dtype):
    config = dict(config)
    fn = M.make_margin(config.pop("kind"), **config)
    grid = np.array(np.meshgrid(SPECIAL, SPECIAL)).reshape(2, -1).T  # every pair of boundary values
    cos = tf.constant(np.concatenate([grid, grid[:, ::-1]], 0)[:, :2], dtype)
    labels = tf.constant(np.arange(cos.shape[0]) % 3 - 1, tf.int32)  # -1, 0, 1, ...
    norms = tf.constant(np.linspace(0.5, 64.0, cos.shape[0]), dtype)
    for step in (0, 7, 1000):
        with tf.GradientTape() as tape:
            tape.watch([cos, norms])
            out = fn(cos, labels, norms, tf.constant(step, tf.int64))
            loss = tf.reduce_sum(out)
        assert out.dtype == tf.float32
        assert np.isfinite(out.numpy()).all()
        gx, gn = tape.gradient(loss, [cos, norms])
        assert np.isfinite(tf.cast(gx, tf.float32).numpy()).all()
        if gn is not None:
            assert np.isfinite(tf.cast(gn, tf.float32).numpy()).all()


# ---------------------------------------------------------------- exact reductions
@pytest.mark.parametrize("b,c", CASES)
def test_combined_reduces_exactly(b, c):
    cos, labels, _ = make_case(b + c, b, c)
    cos, labels = tf.constant(cos), tf.constant(labels)
    for m in (0.5, 0.3):
        np.testing.assert_array_equal(M.combined(cos, labels, 64.0, 1.0, m, 0.0),
                                      M.arcface(cos, labels, 64.0, m))
    for m in (0.35, 0.2):
        np.testing.assert_array_equal(M.combined(cos, labels, 64.0, 1.0, 0.0, m),
                                      M.cosface(cos, labels, 64.0, m))
    np.testing.assert_array_equal(M.combined(cos, labels, 64.0, 4.0, 0.0, 0.0),
                                  M.sphereface(cos, labels, tf.fill([b], 64.0), m=4, lam=0.0))
    np.testing.assert_array_equal(M.arcface(cos, labels, 30.0, 0.0), 30.0 * cos.numpy())


# ---------------------------------------------------------------- monotonicity
THETA = np.linspace(0.0, np.pi, 20001)
MONOTONE = [
    ("arcface", {"scale": 1.0, "margin": 0.5}),
    ("cosface", {"scale": 1.0, "margin": 0.35}),
    ("sphereface", {"m": 4, "lam": 0.0}),
    ("sphereface", {"m": 4, "lam": 5.0}),
] + [("combined", {"scale": 1.0, "m1": a, "m2": b, "m3": c})
     for a, b, c in [(1, 0.5, 0), (1, 0.3, 0.2), (2, 0, 0), (4, 0, 0), (1.35, 0.25, 0.1), (3, 0.2, 0.1)]]


@pytest.mark.parametrize("kind,p", MONOTONE, ids=[f"{k}{i}" for i, (k, _) in enumerate(MONOTONE)])
def test_target_monotone_in_theta(kind, p):
    cos = tf.constant(np.cos(THETA)[:, None], tf.float32)
    target = call(kind, cos, tf.zeros([len(THETA)], tf.int32), tf.ones([len(THETA)]), p).numpy()[:, 0]
    assert np.isfinite(target).all()
    assert np.diff(target).max() <= 1e-6


def test_easy_margin_monotone_on_each_side_of_its_jump():
    # The easy margin is cos(θ + m) for θ < π/2 and cos θ after: by construction it jumps back up by
    # sin m at θ = π/2, so it is monotone only piecewise.
    cos = tf.constant(np.cos(THETA)[:, None], tf.float32)
    target = M.arcface(cos, tf.zeros([len(THETA)], tf.int32), 1.0, 0.5, easy_margin=True).numpy()[:, 0]
    before = cos.numpy()[:, 0] > 0
    assert np.diff(target[before]).max() <= 1e-6 and np.diff(target[~before]).max() <= 1e-6
    np.testing.assert_allclose(target[~before][0] - target[before][-1], math.sin(0.5), atol=1e-3)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.0), (3.0, 0.2, 0.1), (1.35, 0.25, 0.1)])
def test_target_monotone_during_warmup(m1, m2, m3):
    fn = M.make_margin("combined", scale=1.0, m1=m1, m2=m2, m3=m3, warmup_steps=10)
    cos = tf.constant(np.cos(THETA)[:, None], tf.float32)
    for step in (0, 3, 5, 10):
        target = fn(cos, tf.zeros([len(THETA)], tf.int32), None, step).numpy()[:, 0]
        assert np.isfinite(target).all() and np.diff(target).max() <= 1e-6


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("start,steps", [(0, 0), (10, 0), (10, 20), (0, 5)])
def test_margin_ramp(start, steps):
    for step in (0, 5, 9, 10, 11, 15, 20, 29, 30, 31, 100):
        want = 0.0 if step < start else (1.0 if steps == 0 else min(1.0, (step - start) / steps))
        got = M.margin_ramp(tf.constant(step, tf.int64), start, steps)
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("base,gamma,power,lmin", [(1000.0, 0.12, 1.0, 5.0), (1500.0, 0.2, 0.5, 0.0)])
def test_sphereface_lambda(base, gamma, power, lmin):
    for step in (0, 1, 10, 100, 1000, 10**5):
        want = max(lmin, base * (1.0 + gamma * step) ** (-power))
        got = M.sphereface_lambda(step, base, gamma, power, lmin)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


# ---------------------------------------------------------------- make_margin
def test_make_margin_softmax_passes_logits_through():
    raw = tf.constant([[3.5, -120.0, 7.25]], tf.float16)
    out = M.make_margin("softmax")(raw, tf.constant([1]), None, 0)
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out, [[3.5, -120.0, 7.25]])


@pytest.mark.parametrize("step", [0, 5, 40])
def test_make_margin_dispatch_and_ramp(step):
    cos, labels, norms = make_case(3, 12, 5)
    warm = dict(warmup_start=0, warmup_steps=10)
    r = min(1.0, step / 10)
    lam = max(5.0, 1000.0 * (1 + 0.12 * step) ** -1.0)
    cases = [
        ("normface", dict(scale=16.0), "normface", {"scale": 16.0}),
        ("modified_softmax", {}, "modified_softmax", {}),
        ("sphereface", dict(sphere_m=3, **warm), "sphereface", {"m": 3, "lam": lam}),
        ("cosface", dict(scale=64.0, m3=0.35, m2=0.9, **warm), "cosface",
         {"scale": 64.0, "margin": 0.35 * r}),
        ("arcface", dict(scale=64.0, m2=0.5, m3=0.9, **warm), "arcface",
         {"scale": 64.0, "margin": 0.5 * r}),
        ("arcface", dict(scale=64.0, m2=0.5, easy_margin=True), "arcface",
         {"scale": 64.0, "margin": 0.5, "easy_margin": True}),
        ("combined", dict(scale=32.0, m1=3.0, m2=0.2, m3=0.1, **warm), "combined",
         {"scale": 32.0, "m1": 1 + 2.0 * r, "m2": 0.2 * r, "m3": 0.1 * r}),
        ("combined", dict(scale=32.0, m2=0.4, m3=0.1, **warm), "combined",
         {"scale": 32.0, "m1": 1, "m2": 0.4 * r, "m3": 0.1 * r}),
    ]
    for kind, kwargs, ref_kind, p in cases:
        got = M.make_margin(kind, **kwargs)(tf.constant(cos), tf.constant(labels), tf.constant(norms), step)
        want = ref_logits(ref_kind, cos, labels, norms, p)
        clipped = (labels[:, None] == np.arange(5)) & (np.abs(cos) > 1.0 - M.EPS)
        tol = 2e-5 * np.maximum(1.0, np.abs(want)) + clipped * slope(ref_kind, p, norms) * CLIP_ANGLE * 1.01
        assert (np.abs(got.numpy() - want) <= tol).all(), (kind, kwargs, step)


def test_make_margin_errors_name_the_problem():
    with pytest.raises(ValueError) as err:
        M.make_margin("arcfce")
    for name in M.MARGINS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="m1"):
        M.make_margin("combined", m1=0.5)
    with pytest.raises(ValueError, match="m3"):
        M.make_margin("cosface", m3=-0.1)
    with pytest.raises(ValueError, match="sphereface m"):
        M.make_margin("sphereface", sphere_m=2.5)


def test_margin_never_takes_acos_of_the_whole_block():
    b, c = 8, 1000

    @tf.function(input_signature=[tf.TensorSpec([b, c]), tf.TensorSpec([b], tf.int32)])
    def all_margins(cos, labels):
        return [M.arcface(cos, labels), M.combined(cos, labels, 64.0, 3.0, 0.2, 0.1),
                M.sphereface(cos, labels, tf.ones([b]), 4, 5.0), M.cosface(cos, labels)]

    ops = all_margins.get_concrete_function().graph.get_operations()
    heavy = [op for op in ops if op.type in ("Acos", "Cos", "Sin", "Sqrt", "Floor", "FloorMod")]
    assert heavy and all(op.outputs[0].shape.num_elements() <= b for op in heavy)


# ---------------------------------------------------------------- monitoring
@pytest.mark.parametrize("b,c", CASES)
def test_target_angles(b, c):
    cos, labels, _ = make_case(b * c, b, c)
    got = [t.numpy() for t in M.target_angles(tf.constant(cos), tf.constant(labels))]
    deg = np.degrees(np.arccos(np.clip(cos.astype(np.float64), -1, 1)))
    hit = labels[:, None] == np.arange(c)
    want = [deg[hit].sum(), (labels >= 0).sum(), deg[~hit].sum(), (~hit).sum()]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_target_degrees_per_row():
    cos = np.array([[0.5, -1.0, 0.2], [1.0, 0.3, -0.3], [0.1, 0.2, 0.3]], np.float32)
    labels = np.array([0, 2, -1])
    got = M.target_degrees(tf.constant(cos), tf.constant(labels)).numpy()
    np.testing.assert_allclose(got, [60.0, np.degrees(np.arccos(-0.3)), 0.0], rtol=1e-5)

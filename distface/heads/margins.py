"""Margin logits for face recognition: pure functions of (cosine, labels, params).

cosine[i, j] is cos θ between the L2-normalised embedding i and class weight j; labels[i] is the target
column in [0, C), or -1 when row i's class is not in this block (the sharded head holds only a block of
the classes), in which case every column of the row gets the non-target formula. Inputs may be any float
dtype; everything is computed in float32 and returned as float32 [B, C].

Blocks can have millions of columns, so a margin touches only the B target cosines: gather them, adjust
them, scatter them back. The rest of the block costs one multiply. Each margin is also given as its parts
(MarginParts: the scale of the other columns and the target formula), which the fused loss takes so that the
logits are never held: `cosface(...)` is `apply_margin(cosface_parts(...), ...)`.

How the margin is differentiated is a transformation of the parts (MARGIN_GRADIENTS): "exact" differentiates the
target formula; `straight_through(parts)` keeps its value and gives it the plain logit's gradient, as
insightface's arcface_torch does. Both reach every head through the same parts.
"""
import math
from typing import Callable, NamedTuple, Union

import tensorflow as tf

from distface.heads import MARGINS, check_margin_params

Scalar = Union[float, tf.Tensor]

# θ = acos(clip(c, -1 + EPS, 1 - EPS)), for target logits only. 1e-6 is ~17 float32 ulps inside ±1:
# 1 - c is exact there and 1 - c² keeps ~1% accuracy, so acos' derivative 1/sqrt(1 - c²) is accurate
# and bounded by ~707 (1e-7 rounds to 2 ulps: ~6% error, bound ~2048). The price: at c = ±1 the target
# angle is off by at most sqrt(2·EPS) ≈ 1.4e-3 rad (0.08°), and the gradient there is 0 (clipped).
EPS = 1e-6

MARGIN_GRADIENTS = ("exact", "straight_through")  # head.margin_gradient


def _f32(x) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _clip(t: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(t, -1.0 + EPS, 1.0 - EPS)


class MarginParts(NamedTuple):
    """A margin as the loss sees it: non-target logits are scale·cos θ, the target logit is target(cos θ_y, scale).

    `scale` is a scalar, or the feature norms [B] when `per_row` (SphereFace, modified softmax: ||x||·cos θ).
    The fused loss (losses/cross_entropy.py) takes these parts instead of a logits tensor, so it never holds one.
    """
    scale: Scalar
    target: Callable[[tf.Tensor, Scalar], tf.Tensor]
    per_row: bool = False


def apply_margin(parts: MarginParts, cosine: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The logits [B, C] the parts stand for; labels[i] = -1 rows get no target."""
    cosine = _f32(cosine)
    row_scale = _f32(parts.scale)[:, None] if parts.per_row else parts.scale
    return _with_target(row_scale * cosine, cosine, labels, lambda t: parts.target(t, parts.scale))


def label_columns(labels: tf.Tensor) -> tf.Tensor:
    """Labels as column indices, int64: on a GPU TensorFlow keeps int32 tensors in host memory for most kernels but
    not all (tf.where's and the collectives' write device memory), and each mix is a copy back to the host; int64
    stays on the device."""
    return tf.cast(labels, tf.int64)


def target_index(labels: tf.Tensor) -> tf.Tensor:
    """[B, 2] (row, max(label, 0)) of int64 labels: each row's target entry (column 0 for a -1 row)."""
    rows = tf.cast(tf.range(tf.shape(labels)[0]), tf.int64)  # counted on the host (int32), then copied over
    return tf.stack([rows, tf.maximum(labels, 0)], axis=1)


def _with_target(logits: tf.Tensor, cosine: tf.Tensor, labels: tf.Tensor,
                 target_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Replaces logits[i, labels[i]] by target_fn(cosine[i, labels[i]]) where labels[i] >= 0."""
    labels = label_columns(labels)
    index = target_index(labels)  # -1 rows read column 0 and write its own logit back unchanged
    new = tf.where(labels >= 0, target_fn(tf.gather_nd(cosine, index)), tf.gather_nd(logits, index))
    return tf.tensor_scatter_nd_update(logits, index, new)


def _arc(t: tf.Tensor, m: Scalar, easy_margin: bool = False, fallback: bool = True) -> tf.Tensor:
    """cos(θ + m) = cos θ cos m - sin θ sin m; past θ = π - m insightface's fallback, or with fallback=False
    cos(θ + m) itself (arcface_torch's value, which turns back up there)."""
    m = _f32(m)
    tc = _clip(t)
    sin = tf.sqrt((1.0 - tc) * (1.0 + tc))  # (1-c)(1+c), not 1-c²: no cancellation near c = ±1
    cos_tm = t * tf.cos(m) - sin * tf.sin(m)  # unclipped cos θ, so m = 0 gives cos θ bit for bit
    if easy_margin:
        return tf.where(t > 0.0, cos_tm, t)
    if not fallback:
        return cos_tm
    # Past θ = π - m, cos(θ + m) would turn back up; continue with a decreasing line instead.
    return tf.where(t > tf.cos(math.pi - m), cos_tm, t - tf.sin(math.pi - m) * m)


def _psi(phi: tf.Tensor) -> tf.Tensor:
    """(-1)^k cos φ - 2k, k = floor(φ/π): cos φ on [0, π], continued monotonically beyond."""
    k = tf.floor(phi / math.pi)
    return (1.0 - 2.0 * tf.math.floormod(k, 2.0)) * tf.cos(phi) - 2.0 * k


def _scaled(t, scale):
    return scale * t


def plain_parts() -> MarginParts:
    """Plain softmax: the scores are the logits."""
    return MarginParts(1.0, lambda t, scale: t)


def normface_parts(scale: Scalar = 30.0) -> MarginParts:
    return MarginParts(scale, _scaled)


def modified_softmax_parts(norms: tf.Tensor) -> MarginParts:
    return MarginParts(_f32(norms), _scaled, per_row=True)


def sphereface_parts(norms: tf.Tensor, m: int = 4, lam: Scalar = 0.0) -> MarginParts:
    check_margin_params(sphere_m=m)
    return MarginParts(_f32(norms), lambda t, n: (lam * n * t + n * _psi(m * tf.acos(_clip(t)))) / (1.0 + lam),
                       per_row=True)


def cosface_parts(scale: Scalar = 64.0, margin: Scalar = 0.35) -> MarginParts:
    return MarginParts(scale, lambda t, s: s * (t - margin))


def arcface_parts(scale: Scalar = 64.0, margin: Scalar = 0.5, easy_margin: bool = False,
                  fallback: bool = True) -> MarginParts:
    return MarginParts(scale, lambda t, s: s * _arc(t, margin, easy_margin, fallback))


def combined_parts(scale: Scalar = 64.0, m1: Scalar = 1.0, m2: Scalar = 0.0, m3: Scalar = 0.0,
                   fallback: bool = True) -> MarginParts:
    """`fallback` is _arc's, for a Python m1 == 1."""
    if isinstance(m1, (int, float)) and m1 == 1:
        return MarginParts(scale, lambda t, s: s * (_arc(t, m2, fallback=fallback) - m3))
    return MarginParts(scale, lambda t, s: s * (_psi(m1 * tf.acos(_clip(t)) + m2) - m3))


def normface(cosine: tf.Tensor, labels: tf.Tensor, scale: Scalar = 30.0) -> tf.Tensor:
    """NormFace: s·cos θ in every column (features and weights normalised)."""
    del labels  # no margin; the argument keeps the common signature
    return scale * _f32(cosine)


def modified_softmax(cosine: tf.Tensor, labels: tf.Tensor, norms: tf.Tensor) -> tf.Tensor:
    """SphereFace's modified softmax: ||x||·cos θ (only the weights normalised); norms [B]."""
    del labels
    return _f32(norms)[:, None] * _f32(cosine)


def sphereface(cosine: tf.Tensor, labels: tf.Tensor, norms: tf.Tensor, m: int = 4,
               lam: Scalar = 0.0) -> tf.Tensor:
    """A-Softmax: target (λ·||x||·cos θ + ||x||·ψ(mθ)) / (1 + λ), others ||x||·cos θ."""
    return apply_margin(sphereface_parts(norms, m, lam), cosine, labels)


def sphereface_lambda(step: Scalar, base: float = 1000.0, gamma: float = 0.12, power: float = 1.0,
                      lambda_min: float = 5.0) -> tf.Tensor:
    """SphereFace's annealed λ = max(λ_min, base·(1 + γ·step)^-power), a float32 scalar."""
    return tf.maximum(lambda_min, base * tf.pow(1.0 + gamma * _f32(step), -power))


def cosface(cosine: tf.Tensor, labels: tf.Tensor, scale: Scalar = 64.0,
            margin: Scalar = 0.35) -> tf.Tensor:
    """CosFace: target s·(cos θ - m), others s·cos θ."""
    return apply_margin(cosface_parts(scale, margin), cosine, labels)


def arcface(cosine: tf.Tensor, labels: tf.Tensor, scale: Scalar = 64.0, margin: Scalar = 0.5,
            easy_margin: bool = False) -> tf.Tensor:
    """ArcFace: target s·cos(θ + m) (insightface's fallback, or easy margin), others s·cos θ."""
    return apply_margin(arcface_parts(scale, margin, easy_margin), cosine, labels)


def combined(cosine: tf.Tensor, labels: tf.Tensor, scale: Scalar = 64.0, m1: Scalar = 1.0,
             m2: Scalar = 0.0, m3: Scalar = 0.0) -> tf.Tensor:
    """Combined margin: target s·(cos(m1·θ + m2) - m3), others s·cos θ.

    A Python m1 == 1 uses ArcFace's rule with m = m2 (so it reduces exactly to arcface and cosface);
    otherwise (including any tensor m1) cos φ is continued past φ = π as ψ(φ) = (-1)^k cos φ - 2k,
    k = floor(φ/π), which keeps the target non-increasing in θ for every m1 > 0.
    """
    return apply_margin(combined_parts(scale, m1, m2, m3), cosine, labels)


def straight_through(parts: MarginParts) -> MarginParts:
    """The same logits with the plain logits' gradient: the target's backward is that of scale·cos θ.

    This is insightface arcface_torch's CombinedMarginLoss (recognition/arcface_torch/losses.py), which writes the
    margin into the logits under torch.no_grad(). For a per-row scale (the feature norm) the norm's gradient is the
    plain logit's too. The forward value is the margin's bit for bit: plain - stop_gradient(plain) is exactly 0.
    """
    def target(t, scale):
        plain = scale * t
        return tf.stop_gradient(parts.target(t, scale)) + (plain - tf.stop_gradient(plain))

    return parts._replace(target=target)


def margin_ramp(step: Scalar, start: int = 0, steps: int = 0) -> tf.Tensor:
    """Margin warm-up factor in [0, 1]: 0 before `start`, linear to 1 over `steps`, then 1.

    Training from scratch with the full margin on small data can stay at chance; ramping it in after a
    normalised-softmax phase avoids that. steps = 0 switches the margin on at `start`.
    """
    step = _f32(step)
    if steps == 0:
        return tf.cast(step >= start, tf.float32)
    return tf.clip_by_value((step - start) / steps, 0.0, 1.0)


class Margin:
    """A margin of the config: `parts(norms, step)` for the fused loss; called, the logits (the same parts)."""

    def __init__(self, parts: Callable[[tf.Tensor, Scalar], MarginParts]):
        self.parts = parts

    def __call__(self, cosine: tf.Tensor, labels: tf.Tensor, norms: tf.Tensor, step: Scalar) -> tf.Tensor:
        return apply_margin(self.parts(norms, step), cosine, labels)


def make_margin(kind: str, *, scale: float = 30.0, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                easy_margin: bool = False, sphere_m: int = 4, lambda_base: float = 1000.0,
                lambda_gamma: float = 0.12, lambda_power: float = 1.0, lambda_min: float = 5.0,
                warmup_start: int = 0, warmup_steps: int = 0, margin_gradient: str = "exact") -> Margin:
    """One of MARGINS: margin(cosine, labels, norms, step) -> float32 logits, margin.parts(norms, step).

    "softmax" passes raw linear logits (given as `cosine`) through. cosface uses m3, arcface m2, combined
    all three; their margins (and m1 - 1) are scaled by margin_ramp(step, warmup_start, warmup_steps).
    sphereface is warmed up by its own λ annealing instead. margin_gradient is one of MARGIN_GRADIENTS:
    "straight_through" wraps every kind's parts in straight_through(), and ArcFace's target (arcface, combined
    with m1 == 1) drops insightface's fallback past θ = π - m: the fallback only shapes a gradient that
    straight-through discards, and arcface_torch has none.
    """
    if kind not in MARGINS:
        raise ValueError(f"unknown margin kind {kind!r}; known kinds: {', '.join(MARGINS)}")
    if margin_gradient not in MARGIN_GRADIENTS:
        raise ValueError(f"unknown margin gradient {margin_gradient!r}; known: {', '.join(MARGIN_GRADIENTS)}")
    check_margin_params(scale=scale, m1=m1, m2=m2, m3=m3, sphere_m=sphere_m, warmup_steps=warmup_steps)
    fallback = margin_gradient == "exact"

    def ramp(step):
        return margin_ramp(step, warmup_start, warmup_steps)

    def combined_fn(norms, step):
        r = ramp(step)
        m1_eff = m1 if m1 == 1 else 1.0 + (m1 - 1.0) * r  # Python 1 keeps ArcFace's rule
        return combined_parts(scale, m1_eff, m2 * r, m3 * r, fallback)

    fns = {
        "softmax": lambda norms, step: plain_parts(),
        "normface": lambda norms, step: normface_parts(scale),
        "modified_softmax": lambda norms, step: modified_softmax_parts(norms),
        "sphereface": lambda norms, step: sphereface_parts(
            norms, sphere_m, sphereface_lambda(step, lambda_base, lambda_gamma, lambda_power, lambda_min)),
        "cosface": lambda norms, step: cosface_parts(scale, m3 * ramp(step)),
        "arcface": lambda norms, step: arcface_parts(scale, m2 * ramp(step), easy_margin, fallback),
        "combined": combined_fn,
    }
    if margin_gradient == "straight_through":
        return Margin(lambda norms, step: straight_through(fns[kind](norms, step)))
    return Margin(fns[kind])


def target_degrees(cosine: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """θ_y in degrees per row [B] (0 for a row whose target is not among these columns): for histograms."""
    labels = label_columns(labels)
    target = tf.gather_nd(tf.stop_gradient(_f32(cosine)), target_index(labels))
    degrees = tf.acos(tf.clip_by_value(target, -1.0, 1.0)) * (180.0 / math.pi)
    return tf.where(labels >= 0, degrees, 0.0)


class AngleSums(NamedTuple):
    """Angle sums and counts of a block of cosines (float32 scalars); a tuple, so replicas can add them."""
    target_sum: tf.Tensor  # Σ target θ°
    target_count: tf.Tensor  # rows with label >= 0
    other_sum: tf.Tensor  # Σ non-target θ°
    other_count: tf.Tensor  # non-target entries


def target_angles(cosine: tf.Tensor, labels: tf.Tensor) -> AngleSums:
    """AngleSums(Σ target θ°, #rows with label >= 0, Σ non-target θ°, #non-target entries) of the block.

    Sums and counts, so a sharded head can add them across replicas before dividing. NaN entries (a sharded
    block's padding columns) are left out. This takes one acos over the whole [B, C] block, a small cost next to
    the matmul that made it.
    """
    cosine = tf.stop_gradient(_f32(cosine))
    present = tf.logical_not(tf.math.is_nan(cosine))
    degrees = tf.acos(tf.clip_by_value(tf.where(present, cosine, 0.0), -1.0, 1.0)) * (180.0 / math.pi)
    labels = label_columns(labels)
    is_target = tf.one_hot(labels, tf.shape(cosine)[1], on_value=True, off_value=False,
                           dtype=tf.bool)  # a -1 row is all False
    is_other = present & tf.logical_not(is_target)
    zeros = tf.zeros_like(degrees)
    return AngleSums(target_sum=tf.reduce_sum(tf.where(is_target, degrees, zeros)),
                     target_count=tf.reduce_sum(tf.cast(labels >= 0, tf.float32)),
                     other_sum=tf.reduce_sum(tf.where(is_other, degrees, zeros)),
                     other_count=tf.reduce_sum(tf.cast(is_other, tf.float32)))

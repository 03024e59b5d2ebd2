"""distface configured as arcface_torch's recipe follows arcface_torch's own training rule, weight for weight.

The reference is a float64 numpy transcription of insightface recognition/arcface_torch's train_v2.py step on a toy
problem (a linear backbone): PartialFC_V2 at sample rate 1 (partial_fc_v2.py: normalised embeddings and weights,
logits clamped to [-1, 1]), CombinedMarginLoss(64, 1, 0.5, 0) (losses.py: the target cos(θ + m) set under
torch.no_grad, so the gradient passes as that of the plain logits), the mean cross-entropy, then
`clip_grad_norm_(backbone.parameters(), 5)` (total norm, coefficient 5 / (norm + 1e-6), at most 1),
`torch.optim.SGD(momentum=0.9, weight_decay=5e-4)` over the backbone and the head, and PolynomialLRWarmup
(lr_scheduler.py) stepped after every update, whose first update runs at the base rate.
"""
import numpy as np
import pytest

from equivalence import D, D_IN, build, full_weight, make_config, per_replica
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine

S, M, LR, WD, MOMENTUM, CLIP, WARMUP, STEPS = 64.0, 0.5, 0.1, 5e-4, 0.9, 5.0, 2, 5
CLASSES, BATCH = 10, 8


def problem() -> dict:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(BATCH, D_IN)) * 3.0
    labels = rng.integers(0, CLASSES, size=BATCH)
    kernel, bias = rng.normal(size=(D_IN, D)) * 1.6, rng.normal(size=D) * 0.1  # clipped from the 4th update
    weight = rng.normal(size=(CLASSES, D)) * 0.01
    # Example 0's class points away from its embedding: θ + m passes π, where arcface_torch has no fallback.
    weight[labels[0]] = -(x[0] @ kernel + bias) * 0.01
    return dict(x=x.astype(np.float32), labels=labels.astype(np.int32), kernel=kernel.astype(np.float32),
                bias=bias.astype(np.float32), weight=weight.astype(np.float32))


def polynomial_lr_warmup(updates: int) -> list:
    """The rate of each update: PolynomialLRWarmup(opt, WARMUP, STEPS, power 1) as train_v2 steps it."""
    last_epoch, lr, rates = 0, LR, []  # torch's constructor steps once: last_epoch 0 keeps the group's rate
    for _ in range(updates):
        rates.append(lr)
        last_epoch += 1
        if last_epoch <= WARMUP:
            lr = LR * last_epoch / WARMUP
        elif last_epoch <= STEPS:
            lr *= (1 - (last_epoch - WARMUP) / (STEPS - WARMUP)) / (1 - (last_epoch - 1 - WARMUP) / (STEPS - WARMUP))
    return rates


def unit_rows(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def through_unit_rows(v, d_unit):
    """d loss / d v from d loss / d (v / |v|), row by row."""
    unit = unit_rows(v)
    return (d_unit - unit * np.sum(d_unit * unit, axis=1, keepdims=True)) / np.linalg.norm(v, axis=1, keepdims=True)


def arcface_torch_run(p: dict) -> tuple[list, list]:
    """(parameters after each update, whether the backbone's gradient was clipped at each)."""
    params = {k: p[k].astype(np.float64) for k in ("kernel", "bias", "weight")}
    buffers, history, clipped = {}, [], []
    x, labels = p["x"].astype(np.float64), p["labels"]
    rows = np.arange(BATCH)
    for lr in polynomial_lr_warmup(STEPS):
        embeddings = x @ params["kernel"] + params["bias"]
        cosine = np.clip(unit_rows(embeddings) @ unit_rows(params["weight"]).T, -1, 1)
        logits = cosine.copy()
        logits[rows, labels] = np.cos(np.arccos(cosine[rows, labels]) + M)
        logits *= S
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        d_logits = probs
        d_logits[rows, labels] -= 1
        d_cosine = S * d_logits / BATCH  # straight through the margin (and through the clamp, inside [-1, 1])
        d_embeddings = through_unit_rows(embeddings, d_cosine @ unit_rows(params["weight"]))
        grads = {"kernel": x.T @ d_embeddings, "bias": d_embeddings.sum(axis=0),
                 "weight": through_unit_rows(params["weight"], d_cosine.T @ unit_rows(embeddings))}
        norm = np.sqrt(np.sum(grads["kernel"] ** 2) + np.sum(grads["bias"] ** 2))
        coefficient = min(CLIP / (norm + 1e-6), 1.0)
        clipped.append(coefficient < 1.0)
        for name in ("kernel", "bias"):
            grads[name] = grads[name] * coefficient
        for name, g in grads.items():
            d_p = g + WD * params[name]
            buffers[name] = d_p if name not in buffers else MOMENTUM * buffers[name] + d_p
            params[name] = params[name] - lr * buffers[name]
        history.append({k: v.copy() for k, v in params.items()})
    return history, clipped


def recipe_config(per_replica_batch: int):
    cfg = make_config("arcface", per_replica_batch, "sharded")
    cfg.head.scale, cfg.head.m2, cfg.head.margin_gradient = S, M, "straight_through"
    cfg.optim.type, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay = "sgd", LR, MOMENTUM, WD
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.poly_power = "poly", WARMUP, 1.0
    cfg.optim.clip_norm, cfg.optim.clip_scope = CLIP, "backbone"
    cfg.train.steps = STEPS
    return cfg


@pytest.mark.parametrize("engine_name", ["single", "mirrored"])
def test_weights_follow_arcface_torch_after_every_step(engine_name):
    engine = SingleEngine() if engine_name == "single" else mirrored_engine(cpu_replicas=2)
    p = problem()
    want, clipped = arcface_torch_run(p)
    assert any(clipped) and not all(clipped), "the toy problem must exercise the backbone clip and its absence"
    cosine_y = np.sum(unit_rows(p["x"][:1] @ p["kernel"] + p["bias"]) * unit_rows(p["weight"][p["labels"][:1]]))
    assert np.arccos(cosine_y) + M > np.pi  # the case where a fallback would differ
    trainer = build(engine, recipe_config(BATCH // engine.num_replicas), p, total_steps=STEPS)
    x, labels = per_replica(engine, p["x"]), per_replica(engine, p["labels"])
    backbone = trainer.state.backbone.layers[0]
    for step, params in enumerate(want):
        trainer.train_step(x, labels)
        blocks = {r: c.numpy() for r, c in engine.local_components(trainer.state.head.weight).items()}
        got = {"kernel": backbone.kernel.numpy(), "bias": backbone.bias.numpy(),
               "weight": full_weight(blocks, CLASSES)}
        for name, value in params.items():
            # 1e-5 relative to the tensor's scale: float32 leaves an element that cancels to ~0 a few ulps of it
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5 * np.abs(value).max(),
                                       err_msg=f"{name} after update {step + 1} ({engine_name})")

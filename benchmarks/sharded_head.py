"""Sharded (model-parallel) vs replicated (data-parallel) identity head on N MirroredStrategy replicas.

    .venv/bin/python benchmarks/sharded_head.py --classes 10000 100000 1000000 --dim 512 --batch 64

Each (C, head) pair runs in a fresh process (so one that runs out of memory is reported, not fatal), training
the real Trainer step (Dense 512->d backbone, ArcFace head, momentum SGD) on a fixed random batch. Without GPUs
the replicas are logical CPU devices sharing this machine's cores, so the step-time ratio measures work and
traffic per step, not a real interconnect. Prints one markdown table with the ratios measured in this run.
"""
import argparse
import json
import subprocess
import sys
import time


def measure(num_classes: int, sharding: str, dim: int, batch: int, replicas: int, steps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from distface.config import Config
    from distface.heads.sharded import build_head
    from distface.loop import Trainer
    from distface.optim import MomentumSGD
    from distface.parallel import build_engine

    gpus = tf.config.list_physical_devices("GPU")
    engine = build_engine("mirrored", cpu_replicas=0 if len(gpus) >= replicas else replicas)
    cfg = Config()
    cfg.head.type, cfg.head.sharding, cfg.head.scale = "arcface", sharding, 64.0
    cfg.data.batch_size, cfg.model.embedding_size = batch, dim
    with engine.scope():
        backbone = tf.keras.Sequential([tf.keras.Input((dim,)), tf.keras.layers.Dense(dim)])
    head = build_head(cfg.head, engine, num_classes, dim)
    trainer = Trainer(cfg, engine, backbone, head, MomentumSGD(cfg.optim, 1000, engine), num_classes)
    rng = np.random.default_rng(0)
    x = engine.strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(rng.normal(size=(batch, dim)).astype(np.float32)))
    y = engine.strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(rng.integers(0, num_classes, batch).astype(np.int32)))
    head_state = head.replicated_variables + head.sharded_variables
    slots = trainer.optimizer.slots[len(backbone.trainable_variables):]
    per_device = sum(int(np.prod(engine.local_results(v)[0].shape)) * 4 for v in head_state + slots)
    float(trainer.train_step(x, y)["loss"])  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps):
        loss = trainer.train_step(x, y)["loss"]
    float(loss)
    return {"step_s": (time.perf_counter() - start) / steps, "head_bytes": per_device}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=64, help="per replica")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--one", nargs=2, metavar=("C", "SHARDING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.dim, args.batch, args.replicas, args.steps)))
        return
    print("| identities | replicated step (s) | sharded step (s) | speed-up | replicated head MiB/replica | "
          "sharded head MiB/replica | memory ratio |\n|---|---|---|---|---|---|---|")
    for num_classes in args.classes:
        row = {}
        for sharding in ("replicated", "sharded"):
            cmd = [sys.executable, __file__, "--one", str(num_classes), sharding, "--dim", str(args.dim),
                   "--batch", str(args.batch), "--replicas", str(args.replicas), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            row[sharding] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
        rep, sha = row["replicated"], row["sharded"]
        fmt = lambda r, k, scale=1.0: "failed (out of memory?)" if r is None else f"{r[k] / scale:,.3f}"  # noqa: E731
        ratio = f"{rep['step_s'] / sha['step_s']:.2f}x" if rep and sha else "—"
        mem = f"{rep['head_bytes'] / sha['head_bytes']:.2f}x" if rep and sha else "—"
        print(f"| {num_classes:,} | {fmt(rep, 'step_s')} | {fmt(sha, 'step_s')} | {ratio} | "
              f"{fmt(rep, 'head_bytes', 2**20)} | {fmt(sha, 'head_bytes', 2**20)} | {mem} |", flush=True)


if __name__ == "__main__":
    main()

"""Training-step throughput of the registered backbones on this machine.

    .venv/bin/python benchmarks/backbones.py [--names debug lenetpp ...] [--batch 32] [--seconds 10]

A step is forward + backward + plain SGD update of the backbone and a linear 100-class softmax head, in one
tf.function (float32, no XLA), on one fixed batch of random images at the backbone's default input size (no
input pipeline in the loop). After 2 warm-up steps (tracing and first run), steps run until --seconds have
passed (at least 3 steps); images/s = batch x steps / wall time of those steps.
"""
import argparse
import os
import time

import tensorflow as tf

from distface.models import BACKBONES, DEFAULT_EMBEDDING, DEFAULT_INPUT, build_backbone
from distface.models.flops import count_macs, count_parameters

CLASSES = 100
WARMUP = 2


def images_per_second(backbone: tf.keras.Model, batch: int, seconds: float) -> float:
    head = tf.keras.layers.Dense(CLASSES, use_bias=False, name="head")
    head.build(backbone.output.shape)
    variables = backbone.trainable_variables + head.trainable_variables
    optimizer = tf.keras.optimizers.SGD(0.01)
    images = tf.random.uniform((batch, *backbone.input.shape[1:]), -1.0, 1.0, seed=0)
    labels = tf.random.uniform((batch,), 0, CLASSES, dtype=tf.int32, seed=1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = head(tf.cast(backbone(images, training=True), tf.float32))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for _ in range(WARMUP):
        step().numpy()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step().numpy()  # .numpy() waits for the step to finish
        steps += 1
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=list(BACKBONES), choices=list(BACKBONES), metavar="NAME")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed wall time per backbone")
    args = parser.parse_args()

    print(f"Train step (forward + backward + SGD, linear {CLASSES}-class softmax head), batch {args.batch}, "
          f"float32, tf.function without XLA, TF {tf.__version__}, {os.cpu_count()} CPU cores; "
          f"images/s over >= {args.seconds:g} s after {WARMUP} warm-up steps. "
          "GMACs: multiply-accumulates per image, conv + dense layers (1 MAC = 2 FLOPs).\n")
    print("| backbone | input | params (M) | GMACs | images/s (train step) |")
    print("|---|---|---:|---:|---:|")
    for name in args.names:
        model = build_backbone(name, DEFAULT_INPUT[name], DEFAULT_EMBEDDING[name])
        params, macs = count_parameters(model), count_macs(model)
        rate = images_per_second(model, args.batch, args.seconds)
        h, w = DEFAULT_INPUT[name]
        print(f"| {name} | {h}x{w} | {params / 1e6:.2f} | {macs / 1e9:.3f} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()

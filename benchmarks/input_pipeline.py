"""python benchmarks/input_pipeline.py [--batches 30] [--steps 4] [--backbones debug,sphere20]

Can the input pipeline feed training? Measures, in one run on this machine, the images/s of
distface.data.pipeline.train_dataset alone (ORL s1..s40 read from the image folder and from a .rec packed here,
cache off: every image read and decoded every epoch, as on a set too large to cache; and cache on) and the
images/s one training step consumes (forward + backward + SGD with a softmax head, on a fixed batch, no input
pipeline) for each backbone, batch 64 at 112x96, and prints the ratio pipeline / step: above 1 the pipeline
keeps up. Both are measured separately: in training they share the CPU.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from distface.data.orl import orl_split
from distface.data.pipeline import train_dataset
from distface.data.recordio import RecordIOSource, write_recordio
from distface.models import build_backbone

BATCH, IMAGE_SIZE, CLASSES = 64, (112, 96), 40
EMBEDDING = {"debug": 128, "sphere20": 512}


def best_rate(next_batch, batches: int, repeats: int = 3) -> float:
    """Images/s over `batches` calls, the best of `repeats` runs: the least disturbed by other load."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next_batch()
        best = max(best, batches * BATCH / (time.perf_counter() - start))
    return best


def pipeline_rate(source, cache: bool, batches: int) -> float:
    ds = train_dataset(source, image_size=IMAGE_SIZE, batch_size=BATCH, seed=0, cache=cache)
    it = iter(ds)
    for _ in range(8):  # start-up, autotuning and (cache on) the first epoch filling the cache
        next(it)
    return best_rate(lambda: next(it), batches)


def raw_read_rate(source: RecordIOSource, batches: int) -> float:
    """Encoded records/s through RecordIOSource.read alone (the numpy_function reader, 64 keys a call, no decode)."""
    keys = tf.data.Dataset.from_tensor_slices(source.keys()[0])
    ds = keys.repeat().batch(BATCH).map(source.read, num_parallel_calls=tf.data.AUTOTUNE)
    it = iter(ds.prefetch(tf.data.AUTOTUNE))
    next(it)
    return best_rate(lambda: next(it), batches)


def step_rate(backbone_name: str, steps: int) -> float:
    """Images/s of forward + backward + SGD (momentum) with a softmax head, on one fixed batch."""
    tf.keras.utils.set_random_seed(0)
    backbone = build_backbone(backbone_name, IMAGE_SIZE, EMBEDDING[backbone_name])
    head = tf.Variable(tf.random.normal([EMBEDDING[backbone_name], CLASSES], stddev=0.01))
    bias = tf.Variable(tf.zeros([CLASSES]))
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    variables = backbone.trainable_variables + [head, bias]
    images = tf.random.uniform([BATCH, *IMAGE_SIZE, 3], -1.0, 1.0)
    labels = tf.random.uniform([BATCH], 0, CLASSES, tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.matmul(backbone(images, training=True), head) + bias
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for _ in range(2):  # trace, then one warm step
        step().numpy()
    return best_rate(lambda: step().numpy(), steps, repeats=2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=30, help="timed pipeline batches per row (best of 3 runs)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per backbone (best of 2 runs)")
    p.add_argument("--backbones", default="debug,sphere20")
    args = p.parse_args(argv)
    backbones = args.backbones.split(",")

    images = orl_split(range(1, 41))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_recordio(images, Path(tmp) / "train.rec")
        pack_s = time.perf_counter() - start
        rec = RecordIOSource(tmp)
        print(f"ORL s1..s40: {len(images)} images, packed into .rec in {pack_s:.2f} s "
              f"({len(images) / pack_s:.0f} images/s, TensorFlow start-up included); {os.cpu_count()} CPU cores")
        print(f".rec read alone (numpy_function + os.pread, no decode): "
              f"{raw_read_rate(rec, 10 * args.batches):.0f} records/s")
        rows = [(name, cache, pipeline_rate(source, cache, args.batches))
                for name, source in (("folder", images), (".rec", rec)) for cache in (False, True)]
        rec.close()
    steps = {b: step_rate(b, args.steps) for b in backbones}

    print(f"\nbatch {BATCH}, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}; step = forward + backward + SGD, softmax head over "
          f"{CLASSES} classes; embeddings {', '.join(f'{b} {EMBEDDING[b]}' for b in backbones)}")
    header = "| source | cache | pipeline img/s | " + " | ".join(f"{b} step img/s | pipeline/step" for b in backbones)
    print(header + " |")
    print("|" + "---|" * (3 + 2 * len(backbones)))
    for name, cache, rate in rows:
        cells = " | ".join(f"{steps[b]:.0f} | {rate / steps[b]:.1f}" for b in backbones)
        print(f"| {name} | {'on' if cache else 'off'} | {rate:.0f} | {cells} |")


if __name__ == "__main__":
    main()

"""Single-device engine: every collective is the identity, so the distributed code path is the debug path."""
import contextlib

import tensorflow as tf

from distface.parallel.engine import Collectives, Runtime


class SingleCollectives(Collectives):
    @property
    def num_replicas(self) -> int:
        return 1

    def replica_id(self) -> tf.Tensor:
        return tf.constant(0, tf.int32)

    def all_gather(self, x):
        return x

    def all_reduce_sum(self, x):
        return x

    def all_reduce_max(self, x):
        return tf.stop_gradient(x)


class SingleEngine(Runtime):
    name = "single"

    def __init__(self):
        self.collectives = SingleCollectives()

    def scope(self):
        return contextlib.nullcontext()

    def run(self, fn, *args):
        return fn(*args)

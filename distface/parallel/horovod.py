"""Horovod engine: one process per replica, core horovod.tensorflow ops (allreduce, allgather, broadcast).

Horovod's allgather gradient AVERAGES the upstream gradients across ranks, and its DistributedGradientTape and
broadcast_variables fail on Keras 3 variables, so this engine states the gradients of its collectives itself
(the convention of engine.py) and reduces and broadcasts plain tensors.
"""
from __future__ import annotations

import contextlib

import horovod.tensorflow as hvd
import tensorflow as tf

from distface.config import InputError
from distface.parallel.engine import Collectives, Runtime


class HorovodCollectives(Collectives):
    @property
    def num_replicas(self) -> int:
        return hvd.size()

    def replica_id(self):
        return tf.constant(hvd.rank(), tf.int32)

    def all_gather(self, x):
        @tf.custom_gradient
        def gather(x):
            def grad(upstream):
                # This rank's rows of the sum over ranks, by a reduce-scatter (half an all-reduce's traffic);
                # every rank has the same batch size (drop_remainder), so rank r's rows are the r-th slice.
                return hvd.reducescatter(upstream, op=hvd.Sum)

            return hvd.allgather(x), grad

        return gather(x)

    def all_reduce_sum(self, x):
        @tf.custom_gradient
        def reduce(x):
            return hvd.allreduce(x, op=hvd.Sum), lambda upstream: hvd.allreduce(upstream, op=hvd.Sum)

        return reduce(x)

    def all_reduce_max(self, x):
        return hvd.allreduce(tf.stop_gradient(x), op=hvd.Max)


class HorovodEngine(Runtime):
    """One process per replica: every variable is a plain local variable, so `update` needs no merging."""

    name = "horovod"

    def __init__(self):
        hvd.init()
        # Horovod: one GPU per rank, by local rank. Unpinned, every rank of a node computes on GPU 0 and takes
        # memory on all of them. One visible GPU is left alone (the scheduler pinned it, or one rank per node).
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) > 1:
            if hvd.local_size() > len(gpus):
                raise InputError(f"horovod: {hvd.local_size()} ranks on this node but {len(gpus)} GPUs: start at "
                                 f"most one rank per GPU (-np, host slots)")
            tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
        self.collectives = HorovodCollectives()

    @property
    def process_index(self) -> int:
        return hvd.rank()

    @property
    def num_processes(self) -> int:
        return hvd.size()

    def barrier(self) -> None:
        hvd.allreduce(tf.constant(0.0), op=hvd.Sum, name="distface_barrier")

    def reduce_gradients(self, grads):
        flat = tf.nest.flatten(grads)
        present = [tf.convert_to_tensor(g) for g in flat if g is not None]
        reduced = iter(hvd.grouped_allreduce(present, op=hvd.Sum) if present else [])
        return tf.nest.pack_sequence_as(grads, [None if g is None else next(reduced) for g in flat])

    def scope(self):
        return contextlib.nullcontext()

    def run(self, fn, *args):
        return fn(*args)

    def broadcast_from_chief(self, variables):
        for var in variables:
            var.assign(hvd.broadcast(tf.convert_to_tensor(var), root_rank=0))

    def distribute_dataset(self, make_dataset, step: int = 0):
        return iter(make_dataset(hvd.size(), hvd.rank(), step))

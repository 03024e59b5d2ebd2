"""Engines over tf.distribute: MirroredStrategy (one process, N devices) and MultiWorkerMirroredStrategy
(one process per worker, TF_CONFIG). Collectives run in the replica context; their gradients already follow
the convention of engine.py (checked in tests/test_sharded_head.py)."""
from __future__ import annotations

import functools

import tensorflow as tf

from distface.ops.variables import tf_variable
from distface.parallel.engine import Collectives, Runtime

SUM = tf.distribute.ReduceOp.SUM


def _ctx():
    return tf.distribute.get_replica_context()


def _static_replica_id() -> int:
    """This replica's id, a constant in each replica's trace. Modulo the local replicas it indexes this worker's
    local results: every worker runs the same number of replicas."""
    return tf.get_static_value(_ctx().replica_id_in_sync_group)


class StrategyCollectives(Collectives):
    """Collectives of the replica context (inside `strategy.run`)."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def replica_id(self):
        return tf.cast(_ctx().replica_id_in_sync_group, tf.int32)

    def all_gather(self, x):
        # MultiWorkerMirroredStrategy gathers to the input's device, and a step input (the labels) has none in
        # the traced graph ("destinations can not be empty"): tf.identity places it on this replica's device.
        return _ctx().all_gather(tf.identity(x), axis=0)

    def all_reduce_sum(self, x):
        return _ctx().all_reduce(SUM, x)

    def all_reduce_max(self, x):
        # tf.distribute.ReduceOp has no MAX: gather the replicas' values and reduce here.
        x = tf.stop_gradient(x)
        return tf.reduce_max(_ctx().all_gather(x[tf.newaxis], axis=0), axis=0)

    def gather_rows(self, var, rows):
        # Distribution: tf.gather on an ON_READ variable reads the replica's whole component first (ReadVariableOp,
        # then GatherV2); the component itself gathers only the rows, and the tape still reaches the variable
        # (in a replica context its handle is the component's).
        local = self.strategy.experimental_local_results(tf_variable(var))
        return tf.gather(local[_static_replica_id() % len(local)], rows)


class StrategyEngine(Runtime):
    def __init__(self, strategy: tf.distribute.Strategy, name: str):
        self.strategy = strategy
        self.name = name
        self.collectives = StrategyCollectives(strategy)

    @property
    def process_index(self) -> int:
        resolver = getattr(self.strategy, "cluster_resolver", None)
        return (resolver.task_id or 0) if resolver is not None else 0

    @property
    def num_processes(self) -> int:
        return self.num_replicas // self._local_replicas

    @property
    def _local_replicas(self) -> int:
        return len(self.strategy.extended.worker_devices)

    def barrier(self) -> None:
        if self.num_processes > 1:
            self.strategy.run(lambda: _ctx().all_reduce(SUM, tf.constant(0.0)))

    def local_components(self, var):
        components = self.strategy.experimental_local_results(var)
        first = self.process_index * len(components)  # every worker runs the same number of replicas
        return {first + i: c for i, c in enumerate(components)}

    def reduce_gradients(self, grads):
        flat = tf.nest.flatten(grads)
        present = [g for g in flat if g is not None]
        reduced = iter(_ctx().all_reduce(SUM, present) if present else [])
        return tf.nest.pack_sequence_as(grads, [None if g is None else next(reduced) for g in flat])

    def scope(self):
        return self.strategy.scope()

    def run(self, fn, *args):
        return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0],
                                     self.strategy.run(fn, args=args))

    def local_results(self, value):
        return list(self.strategy.experimental_local_results(value))

    def sharded_variable(self, initial_value_fn, name, trainable=True):
        # ON_READ: each device keeps its own component (the block) and updates it locally; trainable=True is
        # needed for the tape to watch it. Components start equal, so each replica then writes its own block.
        shape = tf.TensorShape(initial_value_fn(0).shape)
        with self.strategy.scope():
            var = tf.Variable(tf.zeros(shape), name=name, trainable=trainable,
                              synchronization=tf.VariableSynchronization.ON_READ,
                              aggregation=tf.VariableAggregation.NONE)
        self.strategy.run(lambda: var.assign(initial_value_fn(self.collectives.replica_id())))
        return var

    def replicated_variable(self, initial_value, name, trainable=False):
        with self.strategy.scope():
            return tf.Variable(initial_value, name=name, trainable=trainable,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def update(self, var, fn, *args):
        var = tf_variable(var)
        if var.synchronization == tf.VariableSynchronization.ON_READ:
            return fn(var, *args)  # a sharded block: the replica updates its own component

        # Distribution: a mirrored variable changes only in the cross-replica context; each device's copy gets
        # fn with that device's args, and every replica gets back every local copy's result.
        def merge(strategy, *values):
            return strategy.extended.update(var, fn, args=values, group=False)

        results = _ctx().merge_call(merge, args=args)
        return results[_static_replica_id() % len(results)]

    @property
    def batches_per_step(self) -> int:
        # One input pipeline per process feeds all of its local replicas, one batch each per step.
        return self._local_replicas

    def distribute_dataset(self, make_dataset, step: int = 0):
        def dataset_fn(ctx: tf.distribute.InputContext):
            return make_dataset(ctx.num_input_pipelines, ctx.input_pipeline_id, step * self.batches_per_step)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))


def split_cpu(num_devices: int) -> list[str]:
    """Split the CPU into logical devices so MirroredStrategy can run N replicas without GPUs (tests, debug).
    The split must happen before TensorFlow initialises its devices; an earlier split into enough is reused."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < num_devices:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    return [f"/cpu:{i}" for i in range(num_devices)]


@functools.lru_cache(maxsize=None)
def _mirrored_strategy(devices: tuple[str, ...] | None) -> tf.distribute.MirroredStrategy:
    # One strategy per device set and process: two strategies over the same devices number their collectives
    # from the same keys, and a key reused with another shape aborts ("Shape mismatch in the collective").
    return tf.distribute.MirroredStrategy(list(devices) if devices else None)


def mirrored_engine(cpu_replicas: int = 0) -> StrategyEngine:
    devices = tuple(split_cpu(cpu_replicas)) if cpu_replicas else None
    return StrategyEngine(_mirrored_strategy(devices), "mirrored")


def multiworker_engine() -> StrategyEngine:
    return StrategyEngine(tf.distribute.MultiWorkerMirroredStrategy(), "multiworker")

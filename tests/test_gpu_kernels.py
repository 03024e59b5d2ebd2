"""GPU readiness on a machine without a GPU: every op that a run's training step, its evaluation embedding and its
export signature execute has a GPU kernel for its dtypes, and the step copies back to the host only what is listed
here with its reason (distface/ops/kernels.py; tests/gpu_audit.py traces a configuration as a run builds it).

Needs the `tensorflow` wheel (its GPU kernel registry); `tensorflow-cpu` fails the first test.
"""
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from distface.ops import kernels, row_chunks, row_gradient, rows_in_place
from gpu_audit import audit

HERE = os.path.dirname(os.path.abspath(__file__))
MIRRORED = ("train.strategy=mirrored", "train.cpu_replicas=2")
SINGLE = ("train.strategy=single",)
CONFIGS = {
    "single, sharded ArcFace": SINGLE,
    "mirrored, sharded ArcFace": MIRRORED,
    "mirrored, replicated head": MIRRORED + ("head.sharding=replicated",),
    "mirrored, sharded head updated off place": MIRRORED + ("optim.head_update_in_place=off",),
    "mirrored, Partial FC dense": MIRRORED + ("head.sample_rate=0.5",),
    "mirrored, Partial FC lazy": MIRRORED + ("head.sample_rate=0.5", "optim.head_update=lazy"),
    "mirrored, triplet": MIRRORED + ("loss.type=triplet", "data.source=orl", "data.identities_per_batch=4",
                                     "data.images_per_identity=2"),
    "mirrored, sharded centers": MIRRORED + ("loss.center_weight=0.01", "loss.center_sharding=sharded"),
    "single, replicated centers": SINGLE + ("loss.center_weight=0.01", "loss.center_sharding=replicated"),
    "mirrored, sync BatchNorm": MIRRORED + ("model.sync_batchnorm=true",),
    "single, bfloat16": SINGLE + ("train.mixed_precision=bfloat16",),
    "mirrored, float16 with loss scaling, clipping": MIRRORED + ("train.mixed_precision=float16",
                                                                 "optim.clip_norm=5"),
    "mirrored, Partial FC, float16, clipping": MIRRORED + ("head.sample_rate=0.5", "train.mixed_precision=float16",
                                                           "optim.clip_norm=5"),
    # The optimizers (distface/training/rules.py), each on a full block, Partial FC and a replicated head.
    **{f"mirrored, {rule}{where}": MIRRORED + (f"optim.type={rule}",) + extra
       for rule in ("sgd", "sgdw", "adamw")
       for where, extra in ((", sharded", ()), (", Partial FC dense", ("head.sample_rate=0.5",)),
                            (", Partial FC lazy", ("head.sample_rate=0.5", "optim.head_update=lazy")),
                            (", replicated head", ("head.sharding=replicated",)))},
    "mirrored, the recipe's step: poly, backbone clipping, straight-through margin": MIRRORED + (
        "optim.schedule=poly", "optim.clip_norm=5", "optim.clip_scope=backbone", "head.margin_gradient=straight_through"),
    "mirrored, 2 accumulated micro-batches, Partial FC": MIRRORED + ("train.accumulate_steps=2", "head.sample_rate=0.5"),
    "single, 2 accumulated micro-batches, adamw": SINGLE + ("train.accumulate_steps=2", "optim.type=adamw"),
}
BACKBONES = {"sphere20": "[56, 48]", "iresnet18": "[56, 56]", "mobilefacenet": "[56, 56]", "nn1": "[96, 96]",
             "inception_resnet_v1": "[80, 80]", "lenetpp": "[28, 28]"}  # debug: in every configuration above
CONFIGS.update({f"single, {name}": SINGLE + (f"model.backbone={name}", f"model.image_size={size}")
                for name, size in BACKBONES.items()})

# What the step copies from the GPU to the host, by the distface function whose line made the copied tensor.
CONTROL = {  # a tf.cond predicate: the host decides the branch
    "trainer.py:_replica_step": "the guard (a non-finite step changes nothing): a block's update writes its rows in "
                                "place, so keeping a block unchanged needs a branch",
    "row_gradient.py:_surely_finite": "whether a full block's gradient is proven finite from its factors, or its "
                                      "rows must be counted (the pass the proof saves)",
    "gradients.py:combined": "Partial FC: whether the sampled rows are already unique and sorted",
}
INT32 = {  # TensorFlow keeps int32 on the host on a GPU, but some of its int32 kernels write device memory
    "sharded.py:_sample": "Partial FC's sample: top-k positions and counts",
    "gradients.py:combine": "Partial FC: the count of unique sampled rows",
    "row_chunks.py:map_row_chunks": "a chunked reduction's TensorList of an unknown row count (Partial FC)",
    "triplet.py:_semi_hard": "semi-hard mining's int32 positions",
    "trainer.py:_gradients": "TensorFlow's gradients of gathers, reshapes and all-gathers (shapes as int32 tensors)",
    "tfdist.py:run": "MirroredStrategy's CPU collectives pack tensors by int32 sizes (on GPUs it uses NCCL)",
    "horovod.py:gather": "Horovod's all-gather of the int32 labels passes tf.custom_gradient's int32 Identity",
}


@functools.lru_cache(maxsize=None)
def audited(name: str) -> dict:
    return audit(CONFIGS[name])


def test_the_installed_wheel_carries_the_gpu_kernel_registry():
    matmul = kernels.Node("", "m", "MatMul", {"T": _attr(tf.float32)}, ())
    assert kernels.gpu_kernel(matmul) is not None, "install the tensorflow wheel, not tensorflow-cpu"


def _attr(dtype):
    from tensorflow.core.framework import attr_value_pb2

    return attr_value_pb2.AttrValue(type=dtype.as_datatype_enum)


def toy_step(decay_op: bool):
    """A momentum step with the decoupled decay the optimizer once made through a CPU-only op."""
    w, m = tf.Variable(tf.ones([4, 3])), tf.Variable(tf.zeros([4, 3]))

    @tf.function
    def step(grad):
        tf.raw_ops.ResourceApplyKerasMomentum(var=w.handle, accum=m.handle, lr=0.1, grad=grad, momentum=0.9)
        if decay_op:
            tf.raw_ops.ResourceApplyProximalGradientDescent(var=w.handle, alpha=0.1, l1=0.0, l2=0.0,
                                                            delta=m.read_value())
        counts = tf.matmul(tf.ones([2, 2], tf.int32), tf.ones([2, 2], tf.int32))  # int32: no GPU MatMul
        return tf.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.reduce_sum(counts)])

    return step.get_concrete_function(tf.TensorSpec([4, 3], tf.float32))


def test_the_audit_finds_a_cpu_only_op_and_a_dtype_without_a_gpu_kernel():
    def found(function):
        return {(f.op, f.types) for f in kernels.missing_gpu_kernels(function)}

    assert found(toy_step(decay_op=True)) == {("ResourceApplyProximalGradientDescent", "T=float32"),
                                              ("MatMul", "T=int32")}
    assert found(toy_step(decay_op=False)) == {("MatMul", "T=int32")}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_op_of_the_step_the_evaluation_and_the_export_has_a_gpu_kernel(name):
    assert audited(name)["missing"] == []


@pytest.mark.parametrize("strategy", ["multiworker", "horovod"])
def test_every_op_of_an_engine_in_its_own_process_has_a_gpu_kernel(strategy):
    if strategy == "horovod":
        pytest.importorskip("horovod.tensorflow")
    sets = [f"--set=train.strategy={strategy}", "--set=head.sample_rate=0.5", "--set=loss.center_weight=0.01",
            "--set=optim.clip_norm=5"]
    proc = subprocess.run([sys.executable, os.path.join(HERE, "gpu_audit.py"), *sets], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["missing"] == []
    assert {source for *_, source in result["device_to_host"]} <= CONTROL.keys() | INT32.keys()


@pytest.mark.parametrize("name", CONFIGS)
def test_the_step_copies_to_the_host_only_what_is_explained(name):
    copies = audited(name)["device_to_host"]
    assert {source for function, _, _, source in copies if function == "step"} <= CONTROL.keys() | INT32.keys()
    assert all(function == "step" for function, *_ in copies), "the evaluation and the export copy nothing back"
    predicates = [(source, consumer) for _, _, consumer, source in copies
                  if consumer.split()[0] in ("If", "StatelessIf", "While", "StatelessWhile", "Assert")]
    assert {source for source, _ in predicates} <= CONTROL.keys()
    replicas = 2 if "mirrored" in name else 1
    guards = [p for p in predicates if p[0] == "trainer.py:_replica_step"]
    assert len(guards) == replicas, guards  # one predicate per replica serves every variable's branch


def test_the_matrix_covers_every_backbone_family():
    from distface.models import BACKBONES

    families = {target.split(":")[0] for target in BACKBONES.values()}
    named = [o.split("=")[1] for overrides in CONFIGS.values() for o in overrides if o.startswith("model.backbone=")]
    assert families == {BACKBONES[name].split(":")[0] for name in [*named, "debug"]}


def test_host_transfers_follow_tensorflows_memory_rules():
    """An int32 tf.where (a device kernel) compared on the host, and a float predicate of a tf.cond, each cross
    once; int32 arithmetic among host kernels and float math among device kernels do not."""
    @tf.function
    def fn(labels, x):
        columns = tf.where(labels >= 2, labels - 2, -1)  # SelectV2<int32> writes device memory
        positive = columns >= 0  # GreaterEqual<int32> reads host memory: a copy back
        total = tf.reduce_sum(x * 2.0)
        return tf.cond(total > 0, lambda: x + 1.0, lambda: x), positive

    function = fn.get_concrete_function(tf.TensorSpec([4], tf.int32), tf.TensorSpec([4], tf.float32))
    back = [(t.producer.split()[0], t.consumer.split()[0]) for t in kernels.host_transfers(function)
            if t.direction == "device->host"]
    assert sorted(back) == [("Greater", "StatelessIf"), ("SelectV2", "GreaterEqual")]
    assert np.all(fn(tf.constant([0, 1, 2, 3]), tf.ones([4]))[1].numpy() == [False, False, True, True])


def test_the_replicated_heads_decay_in_row_ranges_has_gpu_kernels(monkeypatch):
    """A replicated head of CHUNK_ROWS rows or more is updated a range of rows at a time in place: with ranges of
    16 rows the audit's small head takes that path."""
    for module in (rows_in_place, row_chunks, row_gradient):
        monkeypatch.setattr(module, "CHUNK_ROWS", 16)
    result = audit(MIRRORED + ("head.sharding=replicated",))
    assert "InplaceUpdate" in result["step_ops"]
    assert result["missing"] == []
    assert {source for *_, source in result["device_to_host"]} <= CONTROL.keys() | INT32.keys()

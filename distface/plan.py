"""distface plan --config NAME_OR_FILE --gpus N --gpu-memory-gib M [--set KEY=VALUE ...] [--classes C] [--images I]

Will a run fit, before the GPUs are rented: the memory of each piece of a training step on one GPU, the total
against M GiB and, when it does not fit, the largest per-GPU batch and the largest head.sample_rate that do; then
the global batch, the steps and the learning rate. Nothing is trained and no data is read (data.path is not needed).
Exit code 0: it fits; 3: it does not; 2: bad input (one line on stderr).

The model of one GPU's memory (float32 unless said):
- backbone: weights and BatchNorm statistics, gradients (with train.accumulate_steps > 1 also their running sum),
  the optimizer's slots (SLOTS), and under train.mixed_precision the weights' 2-byte copies the layers compute with;
- activations: the sum of the backbone's layer output sizes per example (each BatchNormalization layer's at 4 bytes:
  Keras normalises a float32 copy of its input), times the per-GPU batch, times KEPT;
- head (loss.type classification): its block, ceil(C/N) x d rows (all C when head.sharding is replicated), and the
  block's slots. Its gradient: none for a sharded block (ops/row_gradient.py applies it a range of rows at a time),
  one block for a replicated head or optim.head_update_in_place: off, the sampled rows' under Partial FC;
- head temporaries: [B, columns] float32 tensors, B the all-gathered batch (the GPU's own for a replicated head),
  columns the block's rows or, under Partial FC, the sampled ones; HEAD_TEMPORARIES or SAMPLED_TEMPORARIES at once;
- center-loss centers (loss.center_weight > 0): ceil(C/N) or C rows x d, by loss.center_sharding;
- GPU_OVERHEAD.
KEPT and the temporaries were measured on this project's CPU runs (benchmarks/plan_vs_measured.py, whose table is in
docs/benchmarks.md, "Memory plan vs measured"); GPU_OVERHEAD is an estimate: distface has never run on a GPU.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass
from typing import Callable, NamedTuple

from distface.checked_config import check
from distface.config import Config, InputError, parse_config
from distface.console import add_verbose, quiet_tensorflow

EXIT_FITS, EXIT_INPUT, EXIT_TOO_BIG = 0, 2, 3
GIB, MIB = 2 ** 30, 2 ** 20
FLOAT32 = 4
SLOTS = {"sgd": 1, "sgdw": 1, "adamw": 2}  # optimizer slots per variable, by optim.type (training/rules.py)
# Activations: the backward keeps each layer's input (about the sum of the outputs); at its peak the gradient of the
# layer in flight and the runtime's scratch add the rest. Measured as the slope of the peak resident memory over the
# batch, over the layer outputs' bytes: 1.37 iresnet50 (batches 4 and 16), 1.20 to 1.33 mobilefacenet (8 and 32),
# 1.48 the debug CNN (64 and 512); one CPU replica (benchmarks/plan_vs_measured.py --calibrate).
KEPT = 1.4
# [B, columns] float32 tensors a step holds at once, read from the code: the cosine block kept for the backward, the
# gradient at it (losses/cross_entropy.py), its scaled copy S = g / |w| and the product g * cos whose column sums
# give `along` (ops/row_gradient.py). Measured the same way (B 64 and 320, 500,000 columns): 3.5 behind a dense
# layer, 4.5 (sharded block) and 4.7 (replicated head) behind a small CNN.
HEAD_TEMPORARIES = 4
# Partial FC: the same four, and the sampled block's dense weight gradient, which XLA makes from the whole [B, S]
# (RowGradient.whole). Measured 5.6 behind a dense layer, 7.2 behind a small CNN (100,000 sampled columns).
SAMPLED_TEMPORARIES = 6
# Beyond the tensors: the CUDA context with TensorFlow's kernels (~0.3-0.5 GiB, outside TensorFlow's allocator),
# cuDNN's and cuBLAS' handles and the convolutions' workspace (~0.25 GiB), NCCL's and Horovod's fusion buffers
# (~0.25 GiB). Not measured: no GPU has run distface.
GPU_OVERHEAD = 1.0 * GIB
# On the CPU, where the step's memory is the process's: what a replica holds beyond its tensors (the traced step's
# graphs, the kernels' caches, the model's Keras objects), host memory on a GPU machine and so not in the plan.
# Measured with a net and a head too small to matter (lenetpp, 10 identities): 140 MiB for one replica, 208 MiB for
# a process of two. benchmarks/plan_vs_measured.py adds it to the plan it compares with the CPU's peak.
CPU_RUNTIME = 0.1 * GIB
MAX_BATCH = 2 ** 20  # the largest per-GPU batch the solver tries
ORL_IMAGES_PER_IDENTITY = 10  # distface/data/orl.py: 40 identities x 10 images


class Item(NamedTuple):
    name: str  # what it is, with its arithmetic
    bytes: int


@dataclass(frozen=True)
class Network:
    """What the plan reads of a backbone: trainable scalars, the other variables' (BatchNorm's moving means and
    variances), and per example the elements of every layer's output, of which those of BatchNormalization layers."""
    parameters: int
    statistics: int
    activations: int
    normalised: int


@dataclass(frozen=True)
class Setting:
    """One run to plan: its config, its backbone's sizes, the identity count and the GPU count (= replicas)."""
    cfg: Config
    net: Network
    classes: int
    gpus: int

    def memory(self, batch: int | None = None, sample_rate: float | None = None) -> list[Item]:
        """One GPU's memory, piece by piece, at a per-GPU batch and a head.sample_rate (default: the config's)."""
        cfg, net = self.cfg, self.net
        batch = cfg.data.batch_size if batch is None else batch
        slots, params = SLOTS[cfg.optim.type], net.parameters
        accumulating = cfg.train.accumulate_steps > 1
        precision = cfg.train.mixed_precision
        items = [Item(f"backbone weights: {params:,} parameters + {net.statistics:,} statistics",
                      (params + net.statistics) * FLOAT32),
                 Item("backbone gradients" + (" and their sum over micro-batches" if accumulating else ""),
                      params * FLOAT32 * (2 if accumulating else 1)),
                 Item(f"optimizer slots: {slots} per parameter ({cfg.optim.type})", slots * params * FLOAT32)]
        if precision != "none":
            items.append(Item(f"{precision} copies of the weights", params * 2))
        per_example = activation_bytes(net, precision)
        items.append(Item(f"activations: {batch:,} x {per_example / MIB:.1f} MiB of layer outputs"
                          f"{'' if precision == 'none' else f' ({precision})'} x {KEPT:g}",
                          math.ceil(batch * per_example * KEPT)))
        if cfg.loss.type == "classification":
            items += self._head(batch, cfg.head.sample_rate if sample_rate is None else sample_rate, slots)
        return items + [Item("GPU overhead: CUDA context, cuDNN/cuBLAS workspace, NCCL buffers", int(GPU_OVERHEAD))]

    def _head(self, batch: int, sample_rate: float, slots: int) -> list[Item]:
        cfg, d = self.cfg, self.cfg.model.embedding_size
        sharded = cfg.head.sharding == "sharded"
        rows = math.ceil(self.classes / self.gpus) if sharded else self.classes
        scored = batch * self.gpus if sharded else batch  # Distribution: each block scores the all-gathered batch
        width = d + (cfg.head.type == "softmax")  # a softmax head's bias: one more number a row
        extra = cfg.train.accumulate_steps - 1  # earlier micro-batches, whose gradients the step keeps
        block = rows * width * FLOAT32
        items = [Item(f"head block: {rows:,} x {d} ({'ceil(C/N)' if sharded else 'all C'} rows)", block),
                 Item(f"head slots: {slots} x the block", slots * block)]
        if sample_rate < 1:
            columns = sampled_columns(sample_rate, rows, scored)
            # the sampled rows' gradient (one per micro-batch), and the update's gathered weight and slot rows
            count = 2 + slots + extra
            items.append(Item(f"sampled rows: {count} x [{columns:,}, {d}] (gradient, gathered weight and slots)",
                              count * columns * width * FLOAT32))
            held = SAMPLED_TEMPORARIES
        else:
            columns, held = rows, HEAD_TEMPORARIES
            if not sharded or cfg.optim.head_update_in_place == "off":
                items.append(Item("head gradient: the block, dense" + (" (and its sum)" if extra else ""),
                                  block * (2 if extra else 1)))
            else:  # a block's gradient stays factors: each earlier micro-batch keeps its scores and their gradient
                held += 2 * extra
        items.append(Item(f"head temporaries: {held} x [{scored:,}, {columns:,}]", held * scored * columns * FLOAT32))
        if cfg.loss.center_weight > 0:
            placement = cfg.loss.center_sharding  # auto: beside the head (training/centers.py, center_sharding)
            placement = ("sharded" if sharded else "replicated") if placement == "auto" else placement
            center_rows = math.ceil(self.classes / self.gpus) if placement == "sharded" else self.classes
            items.append(Item(f"center-loss centers: {center_rows:,} x {d} ({placement})",
                              center_rows * d * FLOAT32))
        return items

    def total(self, batch: int | None = None, sample_rate: float | None = None) -> int:
        return sum(item.bytes for item in self.memory(batch, sample_rate))

    def largest_batch(self, budget: float) -> int:
        """The largest per-GPU batch within budget bytes (0: none), at the config's head.sample_rate."""
        return largest(lambda b: self.total(batch=b) <= budget, 1, MAX_BATCH)

    def largest_sample_rate(self, budget: float) -> float | None:
        """The largest head.sample_rate below 1 within budget bytes at the config's batch, to 4 decimals; None when
        the head cannot be sampled (not a sharded classification head) or no rate fits."""
        cfg = self.cfg
        if cfg.loss.type != "classification" or cfg.head.sharding != "sharded":
            return None
        rows = math.ceil(self.classes / self.gpus)
        floor = sampled_columns(0.0, rows, cfg.data.batch_size * self.gpus)
        columns = largest(lambda n: self.total(sample_rate=n / rows) <= budget, floor, rows - 1)
        if columns < floor:
            return None
        rate = math.floor(columns / rows * 1e4) / 1e4
        while rate > 0 and self.total(sample_rate=rate) > budget:  # the rounding, in the unlikely case it matters
            rate = round(rate - 1e-4, 4)
        return rate if rate > 0 else None


def activation_bytes(net: Network, precision: str) -> int:
    """Bytes of one example's layer outputs: 4 each at float32; under mixed precision 2, but 4 for BatchNormalization
    layers (their size stands for the float32 copy of the input that Keras normalises and the backward keeps)."""
    if precision == "none":
        return net.activations * FLOAT32
    return (net.activations - net.normalised) * 2 + net.normalised * FLOAT32


def sampled_columns(sample_rate: float, rows: int, scored: int) -> int:
    """A Partial FC block's columns in the worst step: ceil(sample_rate x rows) (heads/sharded.py), or more when the
    batch's positives in the block outnumber them: at most the all-gathered batch, at most the block."""
    return min(rows, max(math.ceil(sample_rate * rows), scored))


def largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest n in [lo, hi] with fits(n), for fits true up to some n and false after (bisection); lo - 1 when
    fits(lo) is false."""
    if lo > hi or not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


class DataSize(NamedTuple):
    classes: int | None  # None: nothing says
    images: int | None
    classes_from: str | None  # where each came from: "data.num_classes", "data.source orl", "--classes"
    images_from: str | None


def data_size(cfg: Config, classes: int | None = None, images: int | None = None) -> DataSize:
    """The identity and image counts: data.num_classes / data.num_images, else the source's where it is known without
    reading data (orl, synthetic, mnist), else --classes / --images. A flag against a known count is an InputError."""
    from distface.data.mnist import MNIST_CLASSES, TRAIN_PER_CLASS

    d = cfg.data
    sizes = {"orl": (len(d.train_identities), ORL_IMAGES_PER_IDENTITY * len(d.train_identities)),
             "synthetic": (d.synthetic_identities, d.synthetic_identities * d.synthetic_images_per_identity),
             "mnist": (MNIST_CLASSES, MNIST_CLASSES * TRAIN_PER_CLASS)}.get(d.source, (None, None))
    found = []
    for key, flag, given, from_source in (("num_classes", "--classes", classes, sizes[0]),
                                          ("num_images", "--images", images, sizes[1])):
        if given is not None and given < 1:
            raise InputError(f"{flag}: must be >= 1, got {given}")
        known, where = getattr(d, key) or None, f"data.{key}"
        if known is None and from_source is not None:
            known, where = from_source, f"data.source {d.source}"
        if known is not None and given is not None and given != known:
            raise InputError(f"{flag} {given:,}: {where} says {known:,} (to plan for another set: --set data.{key}=N)")
        found.append((known, where) if known is not None else (given, flag if given is not None else None))
    (num_classes, classes_from), (num_images, images_from) = found
    return DataSize(num_classes, num_images, classes_from, images_from)


@functools.lru_cache(maxsize=None)
def measure_network(backbone: str, image_size: tuple[int, int], embedding_size: int, dropout: float = 0.0) -> Network:
    """A backbone's sizes, read from its Keras model (built once, float32; nothing runs)."""
    import tensorflow as tf

    from distface.models import build_backbone

    try:
        model = build_backbone(backbone, image_size, embedding_size, dropout)
    except ValueError as err:  # an input too small for the net
        raise InputError(f"model.image_size: {err}") from None
    activations = normalised = 0
    for layer in model.layers:
        size = sum(math.prod(t.shape[1:]) for t in tf.nest.flatten(layer.output))
        activations += size
        normalised += size if isinstance(layer, tf.keras.layers.BatchNormalization) else 0
    parameters = sum(math.prod(w.shape) for w in model.trainable_weights)
    statistics = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return Network(parameters, statistics, activations, normalised)


def schedule_lines(cfg: Config, gpus: int, images: int | None) -> list[str]:
    """The global batch, steps per epoch and in all, and the learning rate after the linear rule."""
    from distface.training.schedules import base_rate, global_batch, resolve_epochs

    batch, t, o = global_batch(cfg, gpus), cfg.train, cfg.optim
    micro = f" x {t.accumulate_steps} micro-batches" if t.accumulate_steps > 1 else ""
    lines = [f"global batch: {cfg.data.batch_size:,} per GPU x {_gpus(gpus)}{micro} = {batch:,}"]
    if images:
        sized = resolve_epochs(cfg, images, batch)
        steps = f"{sized.steps:,} = {t.epochs:g} epochs" if t.epochs > 0 else f"{sized.steps:,} (train.steps)"
        lines.append(f"steps: {sized.per_epoch:,} per epoch (ceil({images:,} images / {batch:,})); total {steps}")
    else:
        total = "unknown (train.epochs needs the image count)" if t.epochs > 0 else f"{t.steps:,} (train.steps)"
        lines.append(f"steps: per epoch unknown (the image count: set data.num_images or pass --images); "
                     f"total {total}")
    if o.lr_global_batch > 0:
        lines.append(f"learning rate: {base_rate(o, batch):.6g} = optim.lr {o.lr:g} x {batch:,} / "
                     f"optim.lr_global_batch {o.lr_global_batch:,} (the linear rule)")
    else:
        lines.append(f"learning rate: {o.lr:g} (optim.lr as given: optim.lr_global_batch is 0)")
    return lines


def report(setting: Setting, budget_gib: float, size: DataSize) -> tuple[str, bool]:
    """The plan as the command prints it, and whether it fits."""
    cfg, gpus, budget = setting.cfg, setting.gpus, budget_gib * GIB
    m, h = cfg.model, cfg.head
    identities = f"{size.classes:,} identities ({size.classes_from})" if size.classes else "identities unknown"
    images = f"{size.images:,} images ({size.images_from})" if size.images else "images unknown"
    lines = [f"model: {m.backbone} at {m.image_size[0]}x{m.image_size[1]}, embedding {m.embedding_size}; "
             f"optimizer {cfg.optim.type}; precision {cfg.train.mixed_precision}",
             f"data: {identities}, {images}"]
    if cfg.loss.type == "classification":
        sampled = f", Partial FC {h.sample_rate:g}" if h.sample_rate < 1 else ""
        lines.append(f"head: {h.type}, {h.sharding}{sampled}")
    items = setting.memory()
    total = sum(item.bytes for item in items)
    lines += ["", f"memory per GPU ({_gpus(gpus)} of {budget_gib:g} GiB):"]
    lines += [f"  {_size(item.bytes):>10}  {item.name}" for item in items]
    fits = total <= budget
    verdict = (f"fits, {(budget - total) / GIB:.2f} GiB spare" if fits
               else f"does NOT fit, {(total - budget) / GIB:.2f} GiB over")
    lines.append(f"  {_size(total):>10}  total of {budget_gib:g} GiB: {verdict}")
    batch = setting.largest_batch(budget)
    scale = gpus * cfg.train.accumulate_steps
    lines.append("largest per-GPU batch that fits: " + (f"{batch:,} (global batch {batch * scale:,})" if batch else
                                                         "none: what does not grow with the batch is over already"))
    if not fits and cfg.loss.type == "classification":
        rate = setting.largest_sample_rate(budget)
        if h.sharding != "sharded":
            lines.append("head.sample_rate (Partial FC) needs head.sharding: sharded")
        elif rate is None:
            lines.append(f"no head.sample_rate fits at batch {cfg.data.batch_size:,}: sampling only the batch's "
                         f"classes would still need {_size(setting.total(sample_rate=0.0))}")
        else:
            lines.append(f"largest head.sample_rate that fits at batch {cfg.data.batch_size:,}: {rate:g}")
    return "\n".join(lines + [""] + schedule_lines(cfg, gpus, size.images)), fits


def _size(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB else f"{count / MIB:.1f} MiB"


def _gpus(count: int) -> str:
    return f"{count} GPU" + ("s" if count != 1 else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="distface plan", description="Will a config fit on N GPUs of M GiB: one GPU's "
                                "memory piece by piece and in all, the largest batch and head.sample_rate that fit, "
                                "the steps and the learning rate. Reads no data.",
                                epilog="exit codes: 0 it fits, 3 it does not fit, 2 bad input")
    p.add_argument("--config", required=True, help="a YAML experiment file, or the name of a shipped config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.batch_size=64 (repeatable)")
    p.add_argument("--gpus", type=int, required=True, metavar="N", help="GPUs of the run (one replica each)")
    p.add_argument("--gpu-memory-gib", type=float, required=True, metavar="M", help="memory of one GPU, GiB")
    p.add_argument("--classes", type=int, metavar="C", help="identities, where neither data.num_classes nor the "
                                                            "source says (recordio, tfrecord, folder)")
    p.add_argument("--images", type=int, metavar="I", help="training images, likewise (for the steps per epoch)")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        if args.gpus < 1:
            raise InputError(f"--gpus: must be >= 1, got {args.gpus}")
        if not args.gpu_memory_gib > 0:
            raise InputError(f"--gpu-memory-gib: must be > 0, got {args.gpu_memory_gib:g}")
        cfg = parse_config(args.config, args.set, data_path=False)
        check(cfg)
        size = data_size(cfg, args.classes, args.images)
        if size.classes is None and cfg.loss.type == "classification":
            raise InputError(f"the identity count is unknown: data.source {cfg.data.source} holds it in the data, "
                             "which the plan does not read; set data.num_classes or pass --classes")
        m = cfg.model
        net = measure_network(m.backbone, tuple(m.image_size), m.embedding_size, m.dropout)
    except (InputError, OSError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return EXIT_INPUT
    text, fits = report(Setting(cfg, net, size.classes or 0, args.gpus), args.gpu_memory_gib, size)
    print(text)
    return EXIT_FITS if fits else EXIT_TOO_BIG


if __name__ == "__main__":
    sys.exit(main())

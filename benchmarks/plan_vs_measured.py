"""`distface plan`'s memory per replica against the peak resident memory of real training steps on this CPU.

    .venv/bin/python benchmarks/plan_vs_measured.py              # the configurations below, one table
    .venv/bin/python benchmarks/plan_vs_measured.py --calibrate  # the measurements behind plan.KEPT and the
                                                                 # head temporaries: slopes over the batch

Each configuration is a shipped config with --set overrides (data.source synthetic, so the class count is known
without data), run in a fresh process: the backbone, objective, optimizer and Trainer wired as
distface.training.session wires them, on one fixed random batch per replica (the plan models a GPU's memory, which
holds no input pipeline; data.source synthetic would render every image in memory first), for one warm-up step and
--steps steps.

Measured, per replica: (ru_maxrss of that process - ru_maxrss of an idle process that imported the same modules,
TensorFlow, Keras and distface, and built nothing) / replicas. The peak is the process's whole life: the setup
(model, head initialisation) and the steps. Planned: the sum of distface.plan's items for one replica without
GPU_OVERHEAD (no CUDA here), plus plan.CPU_RUNTIME (a replica's share of the traced step's graphs, the kernels'
caches and the Keras model's objects: host memory, which on a GPU machine is not the GPU's). Ratio: planned /
measured.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB, MIB = 2 ** 30, 2 ** 20
REPLICAS2 = ["train.strategy=mirrored", "train.cpu_replicas=2"]
SYNTHETIC = ["data.source=synthetic", "data.synthetic_images_per_identity=1"]
# (label, config, overrides): small, middle and large; each process stays under about 6 GiB
CONFIGURATIONS = [
    ("debug CNN 112x96, 1,000 identities, 2 replicas x 64", "debug",
     [*SYNTHETIC, "data.synthetic_identities=1000", "model.image_size=[112, 96]", "data.batch_size=64",
      *REPLICAS2]),
    ("iresnet50 112x112, 100,000 identities, 1 replica x 16", "debug",
     [*SYNTHETIC, "data.synthetic_identities=100000", "model.backbone=iresnet50", "model.image_size=[112, 112]",
      "model.embedding_size=512", "data.batch_size=16", "optim.type=sgd", "train.strategy=single"]),
    ("mobilefacenet 112x112, 1,000,000 identities, 2 replicas x 16", "debug",
     [*SYNTHETIC, "data.synthetic_identities=1000000", "model.backbone=mobilefacenet", "model.image_size=[112, 112]",
      "model.embedding_size=128", "data.batch_size=16", "optim.type=sgd", *REPLICAS2]),
    ("mobilefacenet 112x112 bfloat16, 1,000,000 identities, Partial FC 0.1, 1 replica x 32", "debug",
     [*SYNTHETIC, "data.synthetic_identities=1000000", "model.backbone=mobilefacenet", "model.image_size=[112, 112]",
      "model.embedding_size=128", "data.batch_size=32", "optim.type=sgd", "head.sample_rate=0.1",
      "train.mixed_precision=bfloat16", "train.strategy=single"]),
]
# --calibrate: (what, config, overrides, batches): with two batches the slope between them is measured; with one,
# what the peak holds beyond the plan's items (the CPU runtime: a net and a head too small to matter)
TINY = [*SYNTHETIC, "data.synthetic_identities=10", "model.backbone=lenetpp", "model.image_size=[28, 28]",
        "model.embedding_size=2"]
CALIBRATIONS = [
    ("CPU runtime: lenetpp 28x28, 10 identities, 1 replica", "debug", [*TINY, "train.strategy=single"], (8,)),
    ("CPU runtime: lenetpp 28x28, 10 identities, 2 replicas", "debug", [*TINY, *REPLICAS2], (8,)),
    ("activations: debug CNN 112x96", "debug", [*SYNTHETIC, "data.synthetic_identities=100",
                                                "model.image_size=[112, 96]", "train.strategy=single"], (64, 512)),
    ("activations: iresnet50 112x112", "debug", [*SYNTHETIC, "data.synthetic_identities=100",
                                                 "model.backbone=iresnet50", "model.image_size=[112, 112]",
                                                 "model.embedding_size=512", "train.strategy=single"], (4, 16)),
    ("activations: mobilefacenet 112x112", "debug", [*SYNTHETIC, "data.synthetic_identities=100",
                                                     "model.backbone=mobilefacenet", "model.image_size=[112, 112]",
                                                     "train.strategy=single"], (8, 32)),
    ("activations: mobilefacenet 112x112 bfloat16", "debug", [*SYNTHETIC, "data.synthetic_identities=100",
                                                              "model.backbone=mobilefacenet",
                                                              "model.image_size=[112, 112]",
                                                              "train.mixed_precision=bfloat16",
                                                              "train.strategy=single"], (8, 32)),
    ("head temporaries: sharded block", "debug", [*SYNTHETIC, "data.synthetic_identities=500000",
                                                  "model.backbone=lenetpp", "model.image_size=[28, 28]",
                                                  "model.embedding_size=64", "train.strategy=single"], (64, 320)),
    ("head temporaries: replicated head", "debug", [*SYNTHETIC, "data.synthetic_identities=500000",
                                                    "model.backbone=lenetpp", "model.image_size=[28, 28]",
                                                    "model.embedding_size=64", "head.sharding=replicated",
                                                    "train.strategy=single"], (64, 320)),
    ("head temporaries: Partial FC 0.2", "debug", [*SYNTHETIC, "data.synthetic_identities=500000",
                                                   "model.backbone=lenetpp", "model.image_size=[28, 28]",
                                                   "model.embedding_size=64", "head.sample_rate=0.2",
                                                   "train.strategy=single"], (64, 320)),
]


def load(config: str, overrides: list[str]):
    from distface.checked_config import check
    from distface.config import parse_config

    cfg = parse_config(config, overrides)
    check(cfg)
    return cfg


def max_resident() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(spec: dict) -> dict:
    """One configuration in this process: the step as a run builds it, on a fixed batch; or, idle, nothing."""
    import numpy as np
    import tensorflow as tf

    from distface.models import build_backbone
    from distface.parallel import build_engine
    from distface.training.objectives import OBJECTIVES
    from distface.training.optim import Optimizer
    from distface.training.schedules import global_batch
    from distface.training.session import precision_policy
    from distface.training.state import TrainState
    from distface.training.trainer import Trainer

    if spec.get("idle"):
        return {"max_resident": max_resident()}
    cfg = load(spec["config"], spec["overrides"])
    runtime = build_engine(cfg.train.strategy, cfg.train.cpu_replicas)
    classes = cfg.data.synthetic_identities
    tf.keras.utils.set_random_seed(cfg.train.seed)
    with runtime.scope(), precision_policy(cfg.train.mixed_precision):
        backbone = build_backbone(cfg.model.backbone, cfg.model.image_size, cfg.model.embedding_size)
    objective = OBJECTIVES[cfg.loss.type](cfg, runtime, classes)
    state = TrainState(runtime, backbone, objective, cfg.train.mixed_precision == "float16")
    optimizer = Optimizer(cfg.optim, cfg.train.steps, runtime, global_batch(cfg, runtime.num_replicas))
    trainer = Trainer(cfg, runtime, state, objective, optimizer)
    rng = np.random.default_rng(0)
    b, (h, w) = cfg.data.batch_size, cfg.model.image_size

    def batch():
        return (tf.constant(rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)),
                tf.constant(rng.integers(0, classes, b).astype(np.int32)))

    strategy = getattr(runtime, "strategy", None)
    if strategy is None:
        images, labels = batch()
    else:  # each replica's batch on its own device
        pairs = [batch() for _ in range(runtime.num_replicas)]
        images, labels = (strategy.experimental_distribute_values_from_function(
            lambda ctx, k=k: pairs[ctx.replica_id_in_sync_group][k]) for k in range(2))
    float(trainer.train_step(images, labels).scalars["loss"])  # trace and warm up
    began = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = float(trainer.train_step(images, labels).scalars["loss"])
    return {"max_resident": max_resident(), "replicas": runtime.num_replicas, "loss": loss,
            "step_s": (time.perf_counter() - began) / spec["steps"]}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {spec}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def planned(config: str, overrides: list[str], replicas: int) -> tuple[int, list]:
    """distface.plan's bytes for one replica on this CPU: its items but the GPU's overhead, plus the CPU runtime."""
    from distface import plan

    cfg = load(config, overrides)
    classes = plan.data_size(cfg).classes
    m = cfg.model
    net = plan.measure_network(m.backbone, tuple(m.image_size), m.embedding_size, m.dropout)
    items = [i for i in plan.Setting(cfg, net, classes, replicas).memory() if not i.name.startswith("GPU overhead")]
    items.append(plan.Item("CPU runtime", int(plan.CPU_RUNTIME)))
    return sum(i.bytes for i in items), items


def compare(args) -> None:
    idle = run_child({"idle": True})["max_resident"]
    print(f"# idle process (TensorFlow, Keras, distface imported): ru_maxrss {idle / GIB:.2f} GiB; "
          f"{args.steps} steps after a warm-up; {time.strftime('%Y-%m-%d %H:%M')}")
    print("| configuration | planned GiB/replica | measured GiB/replica | planned / measured | step s |\n"
          "|---|---|---|---|---|")
    for label, config, overrides in CONFIGURATIONS:
        result = run_child({"config": config, "overrides": overrides, "steps": args.steps})
        replicas = result["replicas"]
        measured = (result["max_resident"] - idle) / replicas
        plan_bytes, items = planned(config, overrides, replicas)
        print(f"| {label} | {plan_bytes / GIB:.2f} | {measured / GIB:.2f} | {plan_bytes / measured:.2f} | "
              f"{result['step_s']:.1f} |", flush=True)
        if args.verbose:
            for item in items:
                print(f"|   {item.name} | {item.bytes / GIB:.3f} | | | |")


def calibrate(args) -> None:
    """Per example of the batch: the measured slope of the peak over the plan's unit (the layer outputs at their
    bytes, or one [B, columns] float32 column of the head's temporaries)."""
    from distface import plan

    idle = run_child({"idle": True})["max_resident"]
    for label, config, overrides, batches in CALIBRATIONS:
        peaks = [run_child({"config": config, "overrides": [*overrides, f"data.batch_size={b}"],
                            "steps": args.steps})["max_resident"] for b in batches]
        cfg = load(config, overrides)
        m = cfg.model
        net = plan.measure_network(m.backbone, tuple(m.image_size), m.embedding_size, m.dropout)
        if len(batches) == 1:
            replicas = cfg.train.cpu_replicas or 1
            plan_bytes = planned(config, [*overrides, f"data.batch_size={batches[0]}"], replicas)[0]
            beyond = peaks[0] - idle - (plan_bytes - int(plan.CPU_RUNTIME)) * replicas
            print(f"{label}: batch {batches[0]}: peak {peaks[0] / GIB:.2f} GiB, idle {idle / GIB:.2f} GiB, beyond "
                  f"the plan's items {beyond / MIB:.0f} MiB a process", flush=True)
            continue
        (small, large) = batches
        slope = (peaks[1] - peaks[0]) / (large - small)
        if label.startswith("activations"):
            unit = plan.activation_bytes(net, cfg.train.mixed_precision)
            what = f"{slope / unit:.2f} x the layer outputs ({unit / MIB:.2f} MiB an example)"
        else:
            rows = cfg.data.synthetic_identities
            columns = plan.sampled_columns(cfg.head.sample_rate, rows, 0) if cfg.head.sample_rate < 1 else rows
            backbone = plan.activation_bytes(net, "none") * plan.KEPT
            what = f"{(slope - backbone) / (columns * plan.FLOAT32):.2f} [B, {columns:,}] float32 tensors"
        print(f"{label}: batches {small} and {large}: peaks {peaks[0] / GIB:.2f} and {peaks[1] / GIB:.2f} GiB, "
              f"{slope / MIB:.2f} MiB an example = {what}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--verbose", action="store_true", help="also print the plan's items")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
    elif args.calibrate:
        calibrate(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()

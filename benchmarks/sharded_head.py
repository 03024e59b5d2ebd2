"""The identity head step near the hardware limit: time, peak memory and the largest class count that fits.

    .venv/bin/python benchmarks/sharded_head.py --classes 100000 1000000 --engine horovod
    .venv/bin/python benchmarks/sharded_head.py --classes 1000000 --sample-rate 0.1 --head-update lazy
    .venv/bin/python benchmarks/sharded_head.py --find-max --mem-gib 8

Every configuration runs in fresh processes (one per replica under `--engine horovod`, which starts horovodrun
itself; one process of N replicas under `--engine mirrored`), training the real Trainer step on fixed random
[batch, dim] embeddings per replica: head only (no backbone, `--backbone dense` adds a Dense layer), ArcFace,
`--optimizer` (optim.type, sgd by default). For each it prints:
- the step time and its "matmul limit": the three matmuls one replica's step needs ([N*b, d] x [d, P] forward,
  the two backward products; P = the block's columns, or its sampled ones under Partial FC), timed with plain
  tf.matmul in the same processes on the same threads, all replicas at once as in the step;
- peak resident memory (VmHWM) per process and per replica, over the head state (W block + momentum) per replica,
  and the peak device memory where a GPU is visible (tf.config.experimental.get_memory_info);
- `--find-max` bisects, for the replicated head, the sharded head and Partial FC 0.1, the largest C that trains
  (a warm-up and `--steps` steps) with the resident peak of every process together, setup included, under
  `--mem-gib` (RLIMIT_DATA, at twice a process's share and at most the machine's memory, only stops a runaway
  child), and prints the three maxima.
Without GPUs the replicas share this machine's cores, so ratios measure work and memory, not an interconnect.
"""
import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

GIB = 2 ** 30


def peak_resident_bytes() -> int:
    """This process's peak resident set (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_resident() -> None:
    """Restart VmHWM from the current resident set (Linux clear_refs 5), so the steps' peak is seen apart."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_device_bytes(tf) -> int:
    gpus = tf.config.list_logical_devices("GPU")
    return max((tf.config.experimental.get_memory_info(g.name)["peak"] for g in gpus), default=0)


def measure(args) -> dict:
    """One configuration in this process (every Horovod rank runs it; rank 0's dict is printed)."""
    import numpy as np
    import tensorflow as tf

    from distface.config import Config
    from distface.training.trainer import Trainer
    from distface.training.objectives import Classification
    from distface.training.optim import Optimizer
    from distface.training import schedules
    from distface.parallel import build_engine
    from distface.training.state import TrainState

    num_classes, sharding = args.one_classes, args.one_sharding
    if args.engine == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        engine = build_engine("mirrored", cpu_replicas=0 if len(gpus) >= args.replicas else args.replicas)
    else:
        engine = build_engine("horovod")
    cfg = Config()
    cfg.head.type, cfg.head.sharding, cfg.head.scale = "arcface", sharding, 64.0
    cfg.head.sample_rate = args.one_rate
    cfg.optim.head_update, cfg.optim.type = args.head_update, args.optimizer
    cfg.data.batch_size, cfg.model.embedding_size = args.batch, args.dim
    with engine.scope():
        layers = [tf.keras.layers.Dense(args.dim) if args.backbone == "dense" else tf.keras.layers.Identity()]
        backbone = tf.keras.Sequential([tf.keras.Input((args.dim,)), *layers])
    objective = Classification(cfg, engine, num_classes)
    state = TrainState(engine, backbone, objective)
    optimizer = Optimizer(cfg.optim, 1000, engine, schedules.global_batch(cfg, engine.num_replicas))
    trainer = Trainer(cfg, engine, state, objective, optimizer)
    x, y = per_replica_batch(engine, args, num_classes)
    setup_bytes = peak_resident_bytes()
    reset_peak_resident()

    step = trainer.train_step
    if args.xla:
        step = tf.function(lambda a, b: engine.run(tf.function(trainer._replica_step, jit_compile=True), a, b))
    float(step(x, y).scalars["loss"])  # trace and warm up
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step(x, y).scalars["loss"]
    float(loss)
    step_s = (time.perf_counter() - start) / args.steps

    head = objective.head
    names = {f"head/{n}" for n in (*head.replicated, *head.sharded)}
    slots = [kind for group in state.slots.values() for kind in group.values()]
    head_state = [v for group in (*state.trainable().values(), *slots) for name, v in group.items() if name in names]
    head_bytes = sum(int(np.prod(engine.local_results(v)[0].shape)) * 4 for v in head_state)
    columns = head.block_size or num_classes
    if args.one_rate < 1:
        columns = math.ceil(args.one_rate * columns)
    peak_bytes = peak_resident_bytes()  # before the matmul limit's own operands are made
    result = {"step_s": step_s, "limit_s": matmul_limit(engine, args, columns),
              "peak_bytes": peak_bytes, "setup_bytes": setup_bytes, "device_bytes": peak_device_bytes(tf),
              "head_bytes": head_bytes, "replicas_per_process": engine.num_replicas // engine.num_processes}
    if engine.num_processes > 1:  # Horovod: the largest peak over the ranks
        import horovod.tensorflow as hvd

        for key in ("peak_bytes", "setup_bytes"):
            result[key] = int(hvd.allreduce(tf.constant(float(result[key])), op=hvd.Max))
    return result if engine.is_chief else None


def per_replica_batch(engine, args, num_classes):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(engine.process_index)
    make = lambda: (tf.constant(rng.normal(size=(args.batch, args.dim)).astype(np.float32)),  # noqa: E731
                    tf.constant(rng.integers(0, num_classes, args.batch).astype(np.int32)))
    strategy = getattr(engine, "strategy", None)
    if strategy is None:
        return make()
    pairs = [make() for _ in range(engine.num_replicas)]
    return tuple(strategy.experimental_distribute_values_from_function(
        lambda ctx, k=k: pairs[ctx.replica_id_in_sync_group][k]) for k in range(2))


def matmul_limit(engine, args, columns: int) -> float:
    """Seconds for one replica's three head matmuls, run on every replica at once (as the step runs them)."""
    import tensorflow as tf

    from distface.heads.classifier import rows_times

    rows = args.batch * engine.num_replicas
    shapes = ([rows, args.dim], [columns, args.dim], [rows, columns])

    def products(x, w, g):  # each product feeds the sum, so none is optimised away; the forward one as the head's
        return (tf.reduce_sum(rows_times(x, w)[:1]) + tf.reduce_sum(tf.matmul(g, w)[:1])
                + tf.reduce_sum(tf.matmul(g, x, transpose_a=True)[:1]))

    strategy = getattr(engine, "strategy", None)
    if strategy is None:
        inputs, run = [tf.random.normal(s) for s in shapes], tf.function(products)
    else:  # each replica's operands on its own device
        inputs = [strategy.experimental_distribute_values_from_function(lambda ctx, s=s: tf.random.normal(s))
                  for s in shapes]
        # Every replica's result feeds the output: a replica's products that nothing reads would be pruned.
        run = tf.function(lambda *a: tf.add_n(strategy.experimental_local_results(strategy.run(products, args=a))))
    float(run(*inputs))  # warm up
    engine.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):  # one call per step: repeated identical products in one graph would be merged
        float(run(*inputs))
    return (time.perf_counter() - start) / args.steps


def run_one(args, num_classes: int, sharding: str, rate: float, mem_gib: float | None = None) -> dict | None:
    """The configuration in fresh processes; None when it failed (out of memory, or over mem_gib)."""
    cmd = [sys.executable, __file__, "--one", str(num_classes), sharding, str(rate), "--engine", args.engine,
           "--dim", str(args.dim), "--batch", str(args.batch), "--replicas", str(args.replicas),
           "--steps", str(args.steps), "--head-update", args.head_update, "--backbone", args.backbone,
           "--optimizer", args.optimizer]
    cmd += ["--xla"] if args.xla else []
    processes = args.replicas if args.engine == "horovod" else 1
    if args.engine == "horovod":
        horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or "horovodrun"
        cmd = [horovodrun, "-np", str(args.replicas), "-H", f"localhost:{args.replicas}", *cmd]

    def cap():  # every process (horovodrun's and the ranks) inherits it: a safety net, not the cap itself
        limit = int(min(2 * mem_gib * GIB, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / processes)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap if mem_gib else None)
    # horovodrun prefixes each rank's lines ("[0]<stdout>:")
    lines = [line[line.index('{"'):] for line in proc.stdout.splitlines() if '{"step_s"' in line]
    if proc.returncode != 0 or not lines:
        if args.verbose:
            print(proc.stderr[-3000:], file=sys.stderr)
        return None
    result = json.loads(lines[-1])
    # The cap is judged on the resident peak, setup included: address space is no measure of it (oneDNN's
    # allocator, TensorFlow's default on recent x86 CPUs, reserved 8.9 GiB for a 5.2 GiB peak).
    processes_peak = max(result["peak_bytes"], result["setup_bytes"]) * processes
    if mem_gib and processes_peak > mem_gib * GIB:
        return None
    return result


def row(args, num_classes, sharding, rate) -> str:
    r = run_one(args, num_classes, sharding, rate)
    label = f"{sharding}" + (f", Partial FC {rate} ({args.head_update})" if rate < 1 else "")
    if r is None:
        return f"| {num_classes:,} | {label} | failed (out of memory?) | | | | | | |"
    per_replica = max(r["peak_bytes"], r["setup_bytes"]) / r["replicas_per_process"]
    in_steps = r["peak_bytes"] / r["replicas_per_process"]
    device = f" / {r['device_bytes'] / GIB:.2f} GiB device" if r["device_bytes"] else ""
    return (f"| {num_classes:,} | {label} | {r['step_s']:.3f} | {r['limit_s']:.3f} | {r['step_s'] / r['limit_s']:.2f}x "
            f"| {r['head_bytes'] / GIB:.2f} | {in_steps / GIB:.2f}{device} | {per_replica / GIB:.2f} | "
            f"{per_replica / r['head_bytes']:.2f}x |")


def find_max(args, sharding: str, rate: float) -> int:
    """Bisect (in log2 steps, then linearly to 1/8 of the bracket) the largest C that trains within --mem-gib."""
    lo, hi = 0, args.start
    while run_one(args, hi, sharding, rate, args.mem_gib) is not None:  # grow until it fails
        lo, hi = hi, hi * 2
    if lo == 0:
        return 0
    while hi - lo > lo / 8:
        mid = (lo + hi) // 2
        if run_one(args, mid, sharding, rate, args.mem_gib) is not None:
            lo = mid
        else:
            hi = mid
    return lo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--engine", choices=["mirrored", "horovod"], default="mirrored")
    p.add_argument("--sharding", nargs="+", default=["replicated", "sharded"], choices=["replicated", "sharded"])
    p.add_argument("--sample-rate", type=float, default=1.0, help="Partial FC (sharded only)")
    p.add_argument("--head-update", choices=["dense", "lazy"], default="dense")
    p.add_argument("--optimizer", choices=["sgd", "sgdw", "adamw"], default="sgd", help="optim.type")
    p.add_argument("--backbone", choices=["none", "dense"], default="none")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=64, help="per replica")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--xla", action="store_true", help="compile the replica step with XLA (jit_compile=True)")
    p.add_argument("--find-max", action="store_true")
    p.add_argument("--mem-gib", type=float, default=8.0, help="--find-max: memory cap for all processes")
    p.add_argument("--start", type=int, default=250_000, help="--find-max: first class count tried")
    p.add_argument("--verbose", action="store_true", help="print failed children's stderr")
    p.add_argument("--one", nargs=3, metavar=("C", "SHARDING", "RATE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.one_classes, args.one_sharding, args.one_rate = int(args.one[0]), args.one[1], float(args.one[2])
        result = measure(args)
        if result is not None:
            print(json.dumps(result), flush=True)
        return
    print(f"# engine {args.engine} x{args.replicas}, per-replica batch {args.batch}, d = {args.dim}, "
          f"backbone {args.backbone}, optim.type {args.optimizer}{', XLA' if args.xla else ''}")
    if args.find_max:
        found = {"replicated": find_max(args, "replicated", 1.0), "sharded": find_max(args, "sharded", 1.0),
                 "Partial FC 0.1": find_max(args, "sharded", 0.1)}
        print(f"largest C within {args.mem_gib:g} GiB: " + ", ".join(f"{k} {v:,}" for k, v in found.items()))
        if found["replicated"]:
            print(f"sharded / replicated = {found['sharded'] / found['replicated']:.2f}x, "
                  f"Partial FC / sharded = {found['Partial FC 0.1'] / max(found['sharded'], 1):.2f}x")
        return
    print("| identities | head | step (s) | matmul limit (s) | step / limit | head state GiB/replica | "
          "peak resident in the steps GiB/replica | peak resident GiB/replica | resident / head state |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for num_classes in args.classes:
        for sharding in args.sharding:
            rate = args.sample_rate if sharding == "sharded" else 1.0
            print(row(args, num_classes, sharding, rate), flush=True)


if __name__ == "__main__":
    main()

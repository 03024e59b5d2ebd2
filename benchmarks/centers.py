"""Center-loss centers replicated vs sharded (loss.center_sharding): step time and memory per replica.

    .venv/bin/python benchmarks/centers.py                      # C = 100k and 1M, d = 512, 2 Horovod ranks
    .venv/bin/python benchmarks/centers.py --engine mirrored --classes 100000

Every configuration runs in fresh processes (horovodrun's ranks, one per replica, or one process of N
MirroredStrategy replicas), timing the center-loss part of the training step as the classification objective
runs it (distface/training/centers.py): the examples' centers for the loss, its gradient to the embeddings, the
mean-norm metric and the center update, on fixed random [batch, dim] embeddings per replica. The head and backbone
are left out: their cost is the same for both placements (benchmarks/sharded_head.py measures the head). For each
it prints the step time, the centers' state per replica, and the peak resident memory (VmHWM) per replica.
Without GPUs the replicas share this machine's cores, so ratios measure work and memory, not an interconnect.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sharded_head import GIB, peak_resident_bytes, per_replica_batch  # noqa: E402

PLACEMENTS = ("replicated", "sharded")


def measure(args) -> dict | None:
    """One configuration in this process (every Horovod rank runs it; the chief's dict is printed)."""
    import numpy as np
    import tensorflow as tf

    from distface.training.centers import CENTER_PLACEMENTS
    from distface.losses.center import center_distance
    from distface.parallel import build_engine

    engine = build_engine(args.engine, cpu_replicas=args.replicas if args.engine == "mirrored" else 0)
    centers = CENTER_PLACEMENTS[args.one_placement](engine, args.one_classes, args.dim)
    collectives = engine.collectives
    global_batch = args.batch * engine.num_replicas
    x, y = per_replica_batch(engine, args, args.one_classes)

    def replica_step(embeddings, labels):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = tf.reduce_sum(center_distance(embeddings, centers.batch_centers(collectives, labels)))
            loss = loss / global_batch
        grad = tape.gradient(loss, embeddings)
        norm, count = centers.mean_norm(collectives)
        centers.update(engine, embeddings, labels, 0.5, "paper", tf.constant(True))
        return collectives.all_reduce_sum(tf.stack([loss, norm, count, tf.reduce_sum(grad)]))

    step = tf.function(lambda a, b: engine.run(replica_step, a, b))
    float(step(x, y)[0])  # trace and warm up
    engine.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        out = step(x, y)
    float(out[0])
    step_s = (time.perf_counter() - start) / args.steps
    state_bytes = int(np.prod(engine.local_results(centers.variable)[0].shape)) * 4
    peak = peak_resident_bytes()
    if engine.num_processes > 1:  # Horovod: the largest peak over the ranks
        import horovod.tensorflow as hvd

        peak = int(hvd.allreduce(tf.constant(float(peak)), op=hvd.Max))
    result = {"step_s": step_s, "state_bytes": state_bytes, "peak_bytes": peak,
              "replicas_per_process": engine.num_replicas // engine.num_processes}
    return result if engine.is_chief else None


def run_one(args, num_classes: int, placement: str) -> dict | None:
    cmd = [sys.executable, __file__, "--one", str(num_classes), placement, "--engine", args.engine,
           "--dim", str(args.dim), "--batch", str(args.batch), "--replicas", str(args.replicas),
           "--steps", str(args.steps)]
    if args.engine == "horovod":
        horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or "horovodrun"
        cmd = [horovodrun, "-np", str(args.replicas), "-H", f"localhost:{args.replicas}", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line[line.index('{"'):] for line in proc.stdout.splitlines() if '{"step_s"' in line]
    if proc.returncode != 0 or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--engine", choices=["mirrored", "horovod"], default="horovod")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=64, help="per replica")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--one", nargs=2, metavar=("C", "PLACEMENT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.one_classes, args.one_placement = int(args.one[0]), args.one[1]
        result = measure(args)
        if result is not None:
            print(json.dumps(result), flush=True)
        return
    print(f"# engine {args.engine} x{args.replicas}, per-replica batch {args.batch}, d = {args.dim}, "
          f"{args.steps} timed steps")
    print("| identities | centers | step (ms) | centers state GiB/replica | peak resident GiB/replica | "
          "sharded / replicated (step, resident) |\n|---|---|---|---|---|---|")
    for num_classes in args.classes:
        results = {placement: run_one(args, num_classes, placement) for placement in PLACEMENTS}
        for placement, r in results.items():
            if r is None:
                print(f"| {num_classes:,} | {placement} | failed | | | |", flush=True)
                continue
            resident = r["peak_bytes"] / r["replicas_per_process"]
            ratio = ""
            base = results["replicated"]
            if placement == "sharded" and base is not None:
                ratio = (f"{r['step_s'] / base['step_s']:.2f}x, "
                         f"{r['peak_bytes'] / base['peak_bytes']:.2f}x")
            print(f"| {num_classes:,} | {placement} | {r['step_s'] * 1e3:.1f} | {r['state_bytes'] / GIB:.3f} | "
                  f"{resident / GIB:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()

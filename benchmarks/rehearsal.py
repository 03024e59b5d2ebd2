"""A scale rehearsal of the recipes: each builds, shards and resumes at its real size, on this machine's CPU.

    .venv/bin/python benchmarks/rehearsal.py                         # every recipe, smallest head first
    .venv/bin/python benchmarks/rehearsal.py --recipes ms1mv2_mbf ms1mv3_r50 --mem-gib 12

For each recipe (distface/configs/<set>_<net>.yaml), one at a time (the largest, WebFace42M's, took 14.3 GiB on
2 replicas and more than 14.9 GiB to resume on 1: docs/benchmarks.md, "Recipe rehearsal"), two fresh
`distface train` processes run the recipe as shipped: its class count, its backbone at 112x112, its head, optimizer
and mixed precision. What --set changes:
1. train.strategy mirrored with train.cpu_replicas 2 (two replicas on the CPU, the head split in two blocks),
   data.batch_size 2, train.epochs 0 and train.steps 3, a checkpoint at step 3;
2. --resume of that run folder with train.strategy single and train.steps 4: the head re-split onto one replica;
and in both data.path, data.num_images, train.out_dir, train.log_every 1, train.eval_every 0 (evaluate at the end).
The data is a pack of `--images` synthetic faces (benchmarks/synth_pack.py) whose `property` declares the recipe's
class count, labels spread over the whole range, so the recipe's own source (recordio) builds the recipe's head;
data.num_images is set to the pack's. (data.source synthetic would hold every image decoded in memory: at one image
per class 3.2 GB for MS1MV2 and 77.5 GB for WebFace42M.) No .bin sets: the final evaluation is the default ORL pairs.

Each phase is checked in the order a run does it: its steps trained, the step's checkpoint written, (the resume
from step 3), exit 0; the final evaluation comes after the checkpoint, so a run can fail there alone. Printed per
phase: the process's wall time (start-up, build, steps, checkpoint, evaluation), its steps' time as the run reports
it ("trained N steps in S s"), its peak resident memory (ru_maxrss from os.wait4) and the steps the non-finite
guard skipped (float16 starts with a loss scale of 2^15 that halves on each overflow). Each process asks the
kernel to be the first one stopped when the machine runs out of memory (oom_score_adj 1000): its neighbours on a
shared machine are spared. `--mem-gib` also caps its data segment (RLIMIT_DATA), which counts virtual memory:
TensorFlow's runs far above its resident set (the WebFace42M recipe's 2 replicas failed to allocate under a 23.5
GiB cap at 14.3 GiB resident), so no cap is the default.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synth_pack import write_pack

from distface.config import parse_config

RECIPES = ("ms1mv2_mbf", "ms1mv2_r50", "ms1mv2_r100", "ms1mv3_r50", "glint360k_r100", "wf42m_pfc02_r100")
GIB = 2 ** 30
REPLICAS, BATCH, STEPS = 2, 2, 3


def head_gib_per_replica(cfg, replicas: int) -> float:
    """The head's weight block and its momentum slot on one replica, float32."""
    return 2 * math.ceil(cfg.data.num_classes / replicas) * cfg.model.embedding_size * 4 / GIB


def run(args: list[str], log: Path, mem_gib: float) -> dict:
    """One `distface train` process: its exit code, wall seconds, peak resident GiB, the steps' seconds as the
    run reports them ('trained N steps in S s') and its output (also written to `log`)."""
    def child():
        # On a shared machine the rehearsal's process is the one the kernel stops first when memory runs out.
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        if mem_gib:
            limit = int(mem_gib * GIB)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distface", "train", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, preexec_fn=child)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    trained = re.search(r"trained \d+ steps in (\d+) s", text)
    skipped = re.findall(r"skipped (\d+) non-finite", text)  # the progress lines' running count
    return {"code": proc.returncode, "wall_s": wall, "peak_gib": usage.ru_maxrss * 1024 / GIB,
            "steps_s": int(trained[1]) if trained else None, "skipped": int(skipped[-1]) if skipped else 0,
            "text": text}


def failure(result: dict) -> str:
    """The last line of a failed run that says why (a traceback's last line, or distface's one line)."""
    lines = [line for line in result["text"].splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("distface: ") or re.match(r"\w+(\.\w+)*(Error|Exception)", line)]
    return (said or lines or ["(no output)"])[-1][:160]


def checks(result: dict, out: Path, step: int, resumed_from: int | None = None) -> list[str]:
    """What a phase failed to do, in the order a run does it: train its steps, save the step's checkpoint, (resume
    from the saved one), exit 0. The final evaluation runs after the checkpoint, so a run can fail there alone."""
    problems = []
    if resumed_from is not None and f"ckpt-{resumed_from} at step {resumed_from}" not in result["text"]:
        problems.append(f"no resume from step {resumed_from}")
    if result["steps_s"] is None:
        problems.append("no steps trained")
    if not (out / "checkpoints" / f"manifest-{step}.json").is_file():
        problems.append(f"no checkpoint at step {step}")
    if result["code"] != 0:
        problems.append(f"exit {result['code']}: {failure(result)}")
    return problems


def rehearse(name: str, work: Path, images: int, mem_gib: float, logs: Path) -> dict:
    shipped = parse_config(name, [f"data.path={work}"])  # the recipe's class count and head (no TensorFlow)
    pack = work / "pack"
    pack.mkdir()
    began = time.perf_counter()
    write_pack(pack, images, shipped.data.num_classes)
    pack_s = time.perf_counter() - began
    out = work / "run"
    common = ["--config", name, "--set", f"data.path={pack}", "--set", f"data.num_images={images}",
              "--set", f"data.batch_size={BATCH}", "--set", "train.epochs=0", "--set", f"train.out_dir={out}",
              "--set", f"train.checkpoint_every={STEPS}", "--set", "train.log_every=1", "--set", "train.eval_every=0"]
    row = {"recipe": name, "classes": shipped.data.num_classes, "backbone": shipped.model.backbone,
           "precision": shipped.train.mixed_precision, "sample_rate": shipped.head.sample_rate,
           "head_gib": head_gib_per_replica(shipped, REPLICAS), "pack_s": pack_s, "problems": []}
    print(f"\n{name}: {row['classes']:,} classes, {row['backbone']}, pack of {images} images written in "
          f"{pack_s:.0f} s; {REPLICAS} replicas x batch {BATCH}, {STEPS} steps ...", file=sys.stderr, flush=True)
    first = run([*common, "--set", "train.strategy=mirrored", "--set", f"train.cpu_replicas={REPLICAS}",
                 "--set", f"train.steps={STEPS}"], logs / f"{name}-mirrored.log", mem_gib)
    row["mirrored"] = first
    row["problems"] += [f"2 replicas: {p}" for p in checks(first, out, STEPS)]
    if not (out / "checkpoints" / f"manifest-{STEPS}.json").is_file():
        return row  # nothing to resume
    print(f"{name}: resume on 1 replica to step {STEPS + 1} ...", file=sys.stderr, flush=True)
    second = run([*common, "--set", "train.strategy=single", "--set", f"train.steps={STEPS + 1}",
                  "--resume", str(out)], logs / f"{name}-single.log", mem_gib)
    row["single"] = second
    row["problems"] += [f"resume on 1: {p}" for p in checks(second, out, STEPS + 1, resumed_from=STEPS)]
    return row


def phase(result: dict | None) -> str:
    if result is None:
        return "— | — | —"
    steps = "?" if result["steps_s"] is None else f"{result['steps_s']}"
    return f"{result['wall_s']:.0f} ({steps}) | {result['peak_gib']:.1f} | {result['skipped']}"


def table(rows: list[dict]) -> str:
    lines = ["| recipe | classes | backbone, precision | head + momentum GiB/replica | 2 replicas: wall s (steps s) | "
             "peak GiB | skipped | resume on 1: wall s (step s) | peak GiB | skipped | result |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pfc = f", Partial FC {r['sample_rate']:g}" if r["sample_rate"] < 1 else ""
        lines.append(f"| `{r['recipe']}` | {r['classes']:,} | {r['backbone']}, {r['precision']}{pfc} | "
                     f"{r['head_gib']:.2f} | {phase(r.get('mirrored'))} | {phase(r.get('single'))} | "
                     f"{'; '.join(r['problems']) or 'ok'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--images", type=int, default=64, help="images in each recipe's pack")
    p.add_argument("--mem-gib", type=float, default=0.0, help="RLIMIT_DATA of each process; 0 (default): none")
    p.add_argument("--keep", help="keep each recipe's pack and run folder under this folder")
    p.add_argument("--logs", help="write each process's output here (default: beside its run, removed with it)")
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} CPU cores; recipes one at a time: {', '.join(args.recipes)}", file=sys.stderr)
    rows = []
    for name in args.recipes:
        work = Path(tempfile.mkdtemp(prefix=f"rehearsal-{name}-", dir=args.keep))
        try:
            logs = Path(args.logs) if args.logs else work
            logs.mkdir(parents=True, exist_ok=True)
            rows.append(rehearse(name, work, args.images, args.mem_gib, logs))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()

"""Train every distface/configs/orl_*.yaml of the debug backbone (same input size and step budget) and print a markdown
table of the 10-fold verification on the unseen ORL identities s31..s40, measured in this run.

    .venv/bin/python benchmarks/compare_heads.py [--out runs/compare] [--set key=value ...]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--set", action="append", default=[], help="override passed to every run")
    p.add_argument("--configs", nargs="*")
    args = p.parse_args()
    if not args.configs:
        from distface.checked_config import load_config

        args.configs = [str(c) for c in sorted((ROOT / "distface" / "configs").glob("orl_*.yaml"))
                        if load_config(c).model.backbone == "debug"]
    print("| config | objective | accuracy (10-fold) | VAL @ FAR | AUC | EER | train time |")
    print("|---|---|---|---|---|---|---|")
    for config in args.configs:
        name = Path(config).stem
        out = Path(args.out) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [sys.executable, "-m", "distface.train", "--config", config, "--quiet",
               "--set", f"train.out_dir={out}", *(f"--set={s}" for s in args.set)]
        began = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1]} | | | | | |", flush=True)
            continue
        r = json.loads((ROOT / out / "eval.jsonl").read_text().splitlines()[-1])
        first = Path(config).read_text().splitlines()[1].lstrip("# ")
        print(f"| {name} | {first.split(' on ORL')[0]} | {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} % | "
              f"{100 * r['val']:.2f} % @ {100 * r['far']:.2f} % | {r['auc']:.4f} | {100 * r['eer']:.2f} % | "
              f"{seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()

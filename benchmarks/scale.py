"""python benchmarks/scale.py [--images 1000000] [--identities 100000] [--folders 100000] [--keep DIR]

The input side at real-pack scale, in one run on this machine: writes an identity-sorted .rec of `--images`
records (benchmarks/synth_pack.py), then measures the open time of RecordIOSource, the resident memory its index
takes per image, train_dataset's images/s (batch 128, 112x112, cache off: read and decoded every step) and its
first-batch latency, the time to resume at step 100,000, and the identities in a batch of 128 under the full
per-epoch permutation against the buffer-10k shuffle it replaces (on this pack and on MS1MV2's label layout);
then times scan_identity_folders on `--folders` identity folders of empty placeholder files. The pack is written
just before it is opened, so it is read from the page cache, as on a machine whose RAM holds the pack.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from synth_pack import write_pack

from distface.data.folders import scan_identity_folders
from distface.data.pipeline import permuted_indices, train_dataset
from distface.data.recordio import RecordIOSource
from distface.progress import Progress

BATCH, IMAGE_SIZE, OLD_BUFFER, RESUME_STEP = 128, (112, 112), 10_000, 100_000


def resident_bytes() -> int:
    """VmRSS of this process."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def mixing(labels: np.ndarray, num_identities: int) -> str:
    """Distinct identities per batch of BATCH (mean, min) and the share of all identities a batch spans."""
    batches = labels[:len(labels) // BATCH * BATCH].reshape(-1, BATCH)
    counts = [len(np.unique(batch)) for batch in batches]
    span = np.mean(batches.max(1) - batches.min(1) + 1) / num_identities
    return f"{np.mean(counts):.1f} (min {min(counts)}), spanning {span:.1%} of the identities"


def permuted_labels(labels: np.ndarray, batches: int) -> np.ndarray:
    """The labels the pipeline draws first: its permutation of the keys (train_dataset's, without the reading)."""
    return labels[np.fromiter(permuted_indices(len(labels), seed=0).take(batches * BATCH).as_numpy_iterator(), int)]


def buffered_labels(labels: np.ndarray, batches: int) -> np.ndarray:
    """The labels the old pipeline drew: keys in pack order through a shuffle buffer of OLD_BUFFER."""
    ds = tf.data.Dataset.from_tensor_slices(labels).shuffle(OLD_BUFFER, seed=0).take(batches * BATCH)
    return np.fromiter(ds.as_numpy_iterator(), np.int32)


def compare_mixing(name: str, labels: np.ndarray, batches: int = 50) -> list[tuple[str, str]]:
    identities = int(labels.max()) + 1
    return [(f"identities per batch of {BATCH}, {name}, full permutation",
             mixing(permuted_labels(labels, batches), identities)),
            (f"identities per batch of {BATCH}, {name}, buffer {OLD_BUFFER:,}",
             mixing(buffered_labels(labels, batches), identities))]


def pipeline(source, skip_batches: int = 0):
    return iter(train_dataset(source, image_size=IMAGE_SIZE, batch_size=BATCH, seed=0, cache=False,
                              skip_batches=skip_batches))


def measure_pack(folder: Path, images: int, identities: int) -> list[tuple[str, str]]:
    rec, write_s = timed(lambda: write_pack(folder, images, identities))
    before = resident_bytes()
    source, open_s = timed(lambda: RecordIOSource(folder))
    index = resident_bytes() - before
    arrays = sum(v.nbytes for v in vars(source).values() if isinstance(v, np.ndarray))
    memory = f"{index / 2 ** 20:.0f} MiB = {index / images:.0f} bytes/image (its arrays: {arrays / images:.0f})"
    rows = [("pack written (synth_pack.py)", f"{write_s:.1f} s, {rec.stat().st_size / 2 ** 30:.1f} GiB"),
            ("open RecordIOSource", f"{open_s:.2f} s"), ("index resident memory", memory)]

    it, first_s = timed(lambda: pipeline(source))
    _, first_batch_s = timed(lambda: next(it))
    for _ in range(10):  # warm-up and autotuning
        next(it)
    start, timed_batches = time.perf_counter(), 40
    for _ in range(timed_batches):
        next(it)
    rate = timed_batches * BATCH / (time.perf_counter() - start)
    rows += [("train_dataset images/s (cache off)", f"{rate:.0f}"),
             ("first batch (build + first read)", f"{first_s + first_batch_s:.2f} s")]

    _, resume_s = timed(lambda: next(pipeline(source, skip_batches=RESUME_STEP)))
    rows.append((f"resume at step {RESUME_STEP:,} (to its first batch)",
                 f"{resume_s:.2f} s (skips {RESUME_STEP * BATCH / images:.1f} epochs of keys)"))

    rows += compare_mixing("this pack", source.labels)
    # MS1MV2's layout: 5,822,653 images of 85,742 identities (about 68 each), sorted; labels only, nothing read.
    ms1m = np.repeat(np.arange(85_742, dtype=np.int32), np.diff(np.linspace(0, 5_822_653, 85_743).astype(int)))
    rows += compare_mixing("MS1MV2 layout", ms1m)
    source.close()
    return rows


def measure_folders(root: Path, folders: int) -> list[tuple[str, str]]:
    def make():
        for k in range(folders):
            (root / f"id{k}").mkdir()
            for j in range(2):
                (root / f"id{k}" / f"{j}.jpg").touch()

    _, make_s = timed(make)
    progress = Progress("scanned", unit="folders")
    images, scan_s = timed(lambda: scan_identity_folders(root, progress=progress))
    return [(f"{folders:,} identity folders x 2 empty files created", f"{make_s:.1f} s"),
            ("scan_identity_folders", f"{scan_s:.1f} s ({len(images) / scan_s:.0f} files/s)")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--identities", type=int, default=100_000)
    p.add_argument("--folders", type=int, default=100_000)
    p.add_argument("--keep", help="write the pack here and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    print(f"{args.images:,} images of {args.identities:,} identities; {os.cpu_count()} CPU cores", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(args.keep or tmp)
        pack.mkdir(parents=True, exist_ok=True)
        rows = measure_pack(pack, args.images, args.identities)
        folders = Path(tmp) / "folders"
        folders.mkdir()
        rows += measure_folders(folders, args.folders)
    print(f"\n| {args.images:,} records, batch {BATCH}, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} | measured |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()

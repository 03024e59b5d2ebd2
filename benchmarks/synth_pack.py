"""python benchmarks/synth_pack.py OUT_DIR [--images 1000000] [--identities 100000] [--distinct 256]

Writes an insightface-layout pack (OUT_DIR/train.rec, train.idx, property) sorted by identity, as MS1MV2 and
Glint360K are, for scale tests: `--distinct` real JPEGs of distface.data.synthetic faces are encoded once and their
bytes reused under every label (image i holds JPEG i % distinct), so a million records take seconds, not an hour
of encoding. Identities get nearly equal image counts, in key order.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from distface.data.recordio import atomic_outputs, encode_record, pack_payload
from distface.data.synthetic import synthetic_images


def write_pack(out_dir: str | Path, num_images: int, num_identities: int, distinct: int = 256,
               image_size: tuple[int, int] = (112, 112)) -> Path:
    """OUT_DIR/train.rec (with .idx and property) of num_images JPEGs, labels 0..num_identities-1 non-decreasing."""
    out = Path(out_dir)
    rec, idx, prop = out / "train.rec", out / "train.idx", out / "property"
    faces, _ = synthetic_images(distinct, 1, image_size, seed=0)
    jpegs = []
    for face in faces:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    labels = np.repeat(np.arange(num_identities), np.diff(np.linspace(0, num_images, num_identities + 1).astype(int)))
    starts = np.searchsorted(labels, np.arange(num_identities + 1)) + 1  # image i is key i + 1
    with atomic_outputs(rec, idx, prop) as temps, open(temps[0], "wb") as rec_file:
        offsets = []

        def put(key: int, payload: bytes) -> None:
            offsets.append(rec_file.tell())
            rec_file.write(encode_record(payload))

        put(0, pack_payload([num_images + 1, num_images + 1 + num_identities]))
        for i, label in enumerate(labels.tolist()):
            put(i + 1, pack_payload(float(label), jpegs[i % distinct], key=i + 1))
        for c in range(num_identities):
            put(num_images + 1 + c, pack_payload([starts[c], starts[c + 1]], key=num_images + 1 + c))
        temps[1].write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)), encoding="ascii")
        temps[2].write_text(f"{num_identities},{image_size[0]},{image_size[1]}\n", encoding="ascii")
    return rec


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--identities", type=int, default=100_000)
    p.add_argument("--distinct", type=int, default=256, help="JPEGs encoded; records reuse their bytes")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rec = write_pack(args.out_dir, args.images, args.identities, args.distinct)
    print(f"wrote {rec} ({rec.stat().st_size / 2 ** 20:.0f} MiB): {args.images} images of {args.identities} "
          f"identities in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()

"""distface embed --model RUN_OR_EXPORT INPUT... --out EMB.npy [--align] [--batch-size N] [--quiet]

Embeds images (files, or folders searched recursively) with a training run's latest checkpoint or an exported
model: EMB.npy holds the L2-normalised float32 embeddings [N, d], EMB.txt the N image paths in the same order.
--align detects and aligns the largest face first; images without one are left out and listed on stderr. Without
it, an input shaped unlike the model's input (distface.data.aspect; a few are looked at) draws a warning: it does
not look aligned.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from distface.console import add_verbose, quiet_tensorflow


def write_embeddings(out: str | Path, embeddings: np.ndarray, paths: list[str]) -> tuple[Path, Path]:
    """EMB.npy and EMB.txt, each written to a temporary name first and renamed."""
    npy = Path(out).with_suffix(".npy")
    txt = npy.with_suffix(".txt")
    tmp_npy, tmp_txt = npy.with_name(f".{npy.name}.tmp"), txt.with_name(f".{txt.name}.tmp")
    with open(tmp_npy, "wb") as f:
        np.save(f, embeddings.astype(np.float32))
    tmp_txt.write_text("".join(f"{p}\n" for p in paths))
    os.replace(tmp_npy, npy)
    os.replace(tmp_txt, txt)
    return npy, txt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="distface embed", description=__doc__.split("\n\n")[1])
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="a run directory or an export directory (distface.serving.export)")
    p.add_argument("--out", required=True, help="EMB.npy (EMB.txt gets the paths)")
    p.add_argument("--align", action="store_true", help="detect and align the face first (the align extra)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    from distface.progress import Progress

    progress = Progress("embedded", args.quiet)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
        if not Path(args.out).resolve().parent.is_dir():
            raise FileNotFoundError(f"--out: no folder {Path(args.out).parent}")
        from distface.serving.inference import load_model
        from distface.serving.images import image_chunks, image_paths, unaligned_warning

        paths = image_paths(args.inputs)
        model = load_model(args.model)
        warning = unaligned_warning(paths, model.image_size, args.align)
        if warning:
            print(f"distface: {warning}", file=sys.stderr)
        progress(0, len(paths))
        embedded, kept, no_face = [], [], []
        for images, chunk_kept, chunk_no_face in image_chunks(paths, model.image_size, args.align):
            if len(images):
                embedded.append(model.embed(images, args.batch_size))
            kept += chunk_kept
            no_face += chunk_no_face
            progress(len(kept) + len(no_face), len(paths))
    except (OSError, ValueError, ImportError) as err:
        progress.close()
        print(f"distface: {err}", file=sys.stderr)
        return 2
    for path in no_face:
        print(f"distface: no face in {path}: left out", file=sys.stderr)
    embeddings = np.concatenate(embedded) if embedded else np.zeros((0, 0), np.float32)
    npy, txt = write_embeddings(args.out, embeddings, kept)
    print(f"embedded {len(kept)} of {len(paths)} images (d = {embeddings.shape[1]}) with "
          f"{model.source} -> {npy}, {txt}" + (f" | no face in {len(no_face)}" if args.align else ""))
    return 0

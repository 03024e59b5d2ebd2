"""distface verify A.jpg B.jpg --model RUN_OR_EXPORT [--align] [--threshold COSINE]

Same person or not: the cosine similarity of the two images' embeddings against the threshold the run's last
evaluation chose at FAR 1e-3 (stored with an export), from a run directory or an exported model. Without --align,
an image shaped unlike the model's input (distface.data.aspect) draws a warning: it does not look aligned.
"""
from __future__ import annotations

import argparse
import sys

from distface.console import add_verbose, quiet_tensorflow


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="distface verify", description=__doc__.split("\n\n")[1])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--model", required=True, help="a run directory or an export directory (distface.serving.export)")
    p.add_argument("--align", action="store_true", help="detect and align the faces first (the align extra)")
    p.add_argument("--threshold", type=float, help="cosine threshold instead of the run's")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        from distface.serving.inference import load_model
        from distface.serving.images import image_chunks, image_paths, unaligned_warning

        paths = image_paths([args.first, args.second])
        model = load_model(args.model)
        if args.threshold is None and model.threshold is None:
            raise ValueError(f"{args.model}: no verification threshold (no evaluation in eval.jsonl recorded one): "
                             "pass --threshold")
        warning = unaligned_warning(paths, model.image_size, args.align)
        if warning:
            print(f"distface: {warning}", file=sys.stderr)
        ((images, _, no_face),) = image_chunks(paths, model.image_size, args.align)  # two images: one chunk
        if no_face:
            raise ValueError(f"{no_face[0]}: no face found")
    except (OSError, ValueError, ImportError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    a, b = model.embed(images)
    cosine = float(a @ b)
    if args.threshold is None:
        t = model.threshold
        threshold, origin = t.cosine, f"FAR {t.far:g} on {t.pairs} at step {t.step}"
    else:
        threshold, origin = args.threshold, "--threshold"
    decision = "same" if cosine > threshold else "different"
    print(f"{decision} | cosine {cosine:.4f} {'>' if cosine > threshold else '<='} threshold {threshold:.4f} "
          f"({origin})")
    return 0

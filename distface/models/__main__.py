"""Backbone size from the command line.

    distface models --summary iresnet50 [--image-size 112 112] [--embedding-size 512]
    distface models --summary all      # a markdown table, each backbone at its default input

Parameters are trainable scalars; GMACs are multiply-accumulates per image in convolutions and dense layers
(1 MAC = 2 FLOPs; insightface's "GFLOPs" and MobileFaceNet's "MAdds" count the same), see flops.py.
"""
import argparse
import sys

from distface.console import add_verbose, quiet_tensorflow
from distface.models import BACKBONES, DEFAULT_EMBEDDING, DEFAULT_INPUT


def _measure(name, image_size, embedding_size):
    from distface.models import build_backbone
    from distface.models.flops import count_macs, count_parameters

    model = build_backbone(name, image_size, embedding_size)
    return count_parameters(model), count_macs(model)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="distface models", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", required=True, metavar="NAME", help="a registered backbone, or 'all'")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the backbone's own")
    parser.add_argument("--embedding-size", type=int, metavar="D", help="default: the backbone's own")
    add_verbose(parser)
    args = parser.parse_args(argv)
    quiet_tensorflow(args.verbose)
    if args.summary != "all" and args.summary not in BACKBONES:
        print(f"distface: unknown backbone {args.summary!r} (known: {', '.join(sorted(BACKBONES))})",
              file=sys.stderr)
        return 2
    names = list(BACKBONES) if args.summary == "all" else [args.summary]

    rows = []
    for name in names:
        size = tuple(args.image_size or DEFAULT_INPUT[name])
        dim = args.embedding_size or DEFAULT_EMBEDDING[name]
        try:
            params, macs = _measure(name, size, dim)
        except ValueError as error:  # e.g. an input too small for the net
            print(f"distface: {error}", file=sys.stderr)
            return 2
        rows.append((name, size, dim, params, macs))

    if args.summary != "all":
        name, size, dim, params, macs = rows[0]
        print(f"{name}: input {size[0]}x{size[1]}x3, embedding {dim}")
        print(f"  parameters: {params:,} (trainable; BN moving statistics not counted)")
        print(f"  GMACs: {macs / 1e9:.3f} (multiply-accumulates per image in conv and dense layers; 1 MAC = 2 FLOPs)")
        return 0
    print("| backbone | input | embedding | params (M) | GMACs (multiply-accumulates / image) |")
    print("|---|---|---|---:|---:|")
    for name, size, dim, params, macs in rows:
        print(f"| {name} | {size[0]}x{size[1]} | {dim} | {params / 1e6:.2f} | {macs / 1e9:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

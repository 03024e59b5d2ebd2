"""python -m distface.data pack FOLDER OUT.rec | OUT.tfrecord [--files N] [--extensions .jpg,.png] [--quiet]
python -m distface.data bin PAIRS_FILE IMAGE_ROOT OUT.bin [--quiet]

pack: an image tree with one sub-folder per identity -> insightface's RecordIO (OUT.rec, OUT.idx, property) or
TFRecord files (--files N: OUT-00000-of-0000N.tfrecord ...). bin: the pairs of an LFW-format pairs file -> an
insightface .bin verification set. Bad input stops with one line on stderr and exit code 2, writing nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

FORMATS = {".rec": "recordio", ".tfrecord": "tfrecord", ".tfrec": "tfrecord"}


class Progress:
    """progress(count, total): one self-overwriting stderr line with images/s, at most every half second."""

    def __init__(self, verb: str, quiet: bool):
        self.verb, self.quiet, self.open_line = verb, quiet, False
        self.start = None  # the clock starts at the first image, after TensorFlow's start-up

    def __call__(self, count: int, total: int) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start, self.first, self.last = now, count, now
        if self.quiet or (now - self.last < 0.5 and count != total):
            return
        self.last = now
        rate = (count - self.first) / (now - self.start) if now > self.start else 0.0
        print(f"\r{self.verb} {count}/{total} images | {rate:.0f} images/s", end="", file=sys.stderr, flush=True)
        self.open_line = count != total
        if count == total:
            print(file=sys.stderr)

    def close(self) -> None:
        """End a line left open by an interruption, so the next message starts on its own line."""
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distface.data", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack an identity-folder tree into RecordIO or TFRecord")
    pack.add_argument("folder", help="image root: one sub-folder per identity")
    pack.add_argument("out", help="OUT.rec (RecordIO) or OUT.tfrecord (TFRecord)")
    pack.add_argument("--format", choices=sorted(set(FORMATS.values())),
                      help="default: from OUT's extension (.rec, .tfrecord)")
    pack.add_argument("--files", type=int, default=1, help="TFRecord files to deal the images over (default 1)")
    pack.add_argument("--extensions", help="comma-separated image extensions to include, e.g. .pgm")
    pack.add_argument("--quiet", action="store_true", help="no progress line")
    pairs = sub.add_parser("bin", help="make an insightface .bin verification set from an LFW-format pairs file")
    pairs.add_argument("pairs_file")
    pairs.add_argument("image_root", help="folder the pairs' identities live in")
    pairs.add_argument("out", help="OUT.bin")
    pairs.add_argument("--quiet", action="store_true", help="no progress line")
    return p.parse_args(argv)


def pack(args: argparse.Namespace, progress: Progress) -> str:
    from distface.data.folders import IMAGE_EXTENSIONS, scan_identity_folders

    fmt = args.format or FORMATS.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {args.out!r}: name it .rec or .tfrecord, or pass --format")
    if args.files != 1 and fmt != "tfrecord":
        raise ValueError("--files applies to --format tfrecord only")
    extensions = IMAGE_EXTENSIONS if args.extensions is None else \
        tuple(e if e.startswith(".") else f".{e}" for e in args.extensions.split(","))
    images = scan_identity_folders(args.folder, extensions=extensions)
    if fmt == "recordio":
        from distface.data.recordio import write_recordio

        written = write_recordio(images, args.out, progress)
    else:
        from distface.data.tfrecord import write_tfrecord

        written = write_tfrecord(images, args.out, args.files, progress)
        written.append(written[0].parent / "property")
    return f"{len(images)} images of {images.num_classes} identities -> {', '.join(map(str, written))}"


def make_bin(args: argparse.Namespace, progress: Progress) -> str:
    from distface.data.binset import pack_bin

    return f"{pack_bin(args.pairs_file, args.image_root, args.out, progress)} pairs -> {args.out}"


def main(argv=None) -> int:
    args = parse_args(argv)
    progress = Progress("packed" if args.command == "pack" else "encoded", args.quiet)
    try:
        summary = pack(args, progress) if args.command == "pack" else make_bin(args, progress)
    except (ValueError, OSError) as err:
        progress.close()
        print(f"distface.data: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

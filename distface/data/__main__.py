"""distface pack FOLDER OUT.rec | OUT.tfrecord [--files N] [--extensions .jpg,.png]
    [--bad-images fail | skip] [--quiet]
distface bin PAIRS_FILE IMAGE_ROOT OUT.bin [--bad-images fail | skip] [--quiet]
distface align RAW_DIR ALIGNED_DIR [--size 112x112 | 112x96] [--all] [--workers N] [--ext .png | .jpg]
    [--quiet]

pack: an image tree with one sub-folder per identity -> insightface's RecordIO (OUT.rec, OUT.idx, property) or
TFRecord files (--files N: OUT-00000-of-0000N.tfrecord ...). bin: the pairs of an LFW-format pairs file -> an
insightface .bin verification set. align: detect the face (the largest, or --all) in each image of an identity-
folder tree, fit its 5 landmarks onto the ArcFace template and write the crops in the same tree; images without a
face are listed in ALIGNED_DIR/no_face.txt, images with several (the largest is kept) in
ALIGNED_DIR/several_faces.txt (needs pip install 'distface[align]'). pack and bin decode every image
once before writing: one that cannot be decoded stops them, naming it, or (--bad-images skip) is left out and
listed. Bad input stops with one line on stderr and exit code 2, writing nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distface.console import add_verbose, quiet_tensorflow
from distface.progress import Progress

FORMATS = {".rec": "recordio", ".tfrecord": "tfrecord", ".tfrec": "tfrecord"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="distface", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack an identity-folder tree into RecordIO or TFRecord")
    pack.add_argument("folder", help="image root: one sub-folder per identity")
    pack.add_argument("out", help="OUT.rec (RecordIO) or OUT.tfrecord (TFRecord)")
    pack.add_argument("--format", choices=sorted(set(FORMATS.values())),
                      help="default: from OUT's extension (.rec, .tfrecord)")
    pack.add_argument("--files", type=int, default=1, help="TFRecord files to deal the images over (default 1)")
    pack.add_argument("--extensions", help="comma-separated image extensions to include, e.g. .pgm")
    bad_images_option(pack, "images")
    pack.add_argument("--quiet", action="store_true", help="no progress line")
    pairs = sub.add_parser("bin", help="make an insightface .bin verification set from an LFW-format pairs file")
    pairs.add_argument("pairs_file")
    pairs.add_argument("image_root", help="folder the pairs' identities live in")
    pairs.add_argument("out", help="OUT.bin")
    bad_images_option(pairs, "pairs that use one")
    pairs.add_argument("--quiet", action="store_true", help="no progress line")
    align = sub.add_parser("align", help="detect, landmark and align faces onto the ArcFace template")
    align.add_argument("raw_dir", help="image root: one sub-folder per identity")
    align.add_argument("aligned_dir", help="output root (new or empty), the same sub-folders")
    align.add_argument("--size", choices=("112x112", "112x96"), default="112x112",
                       help="112x112 (ArcFace, default) or 112x96 (SphereFace nets)")
    align.add_argument("--all", action="store_true", help="every face of an image (<name>_<k>), not the largest")
    align.add_argument("--workers", type=int, help="processes (default: one per core)")
    align.add_argument("--ext", choices=(".png", ".jpg"), default=".png", help="output format (default .png)")
    align.add_argument("--quiet", action="store_true", help="no progress line")
    for command in (pack, pairs, align):
        add_verbose(command)
    return p.parse_args(argv)


SKIP_HINT = "pass --bad-images skip to leave such files out"


def bad_images_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                        help=f"an image that cannot be decoded: fail (default) names it and writes nothing, skip "
                             f"leaves out the {what} and lists them")


def left_out(problems: dict[str, str]) -> str:
    """The summary's words for the files --bad-images skip left out (the first three named)."""
    if not problems:
        return ""
    shown = "; ".join(f"{path}: {problem}" for path, problem in list(problems.items())[:3])
    return f" | left out {len(problems)} images that cannot be decoded: {shown}{' ...' if len(problems) > 3 else ''}"


def pack(args: argparse.Namespace, progress: Progress) -> str:
    from distface.data.folders import IMAGE_EXTENSIONS, scan_identity_folders
    from distface.data.validate import screen_images

    fmt = args.format or FORMATS.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format from {args.out!r}: name it .rec or .tfrecord, or pass --format")
    if args.files != 1 and fmt != "tfrecord":
        raise ValueError("--files applies to --format tfrecord only")
    extensions = IMAGE_EXTENSIONS if args.extensions is None else \
        tuple(e if e.startswith(".") else f".{e}" for e in args.extensions.split(","))
    images, bad = screen_images(scan_identity_folders(args.folder, extensions=extensions), args.bad_images,
                                Progress("decoded", args.quiet), SKIP_HINT)
    if not len(images):
        raise ValueError(f"{args.folder}: no image can be decoded")
    if fmt == "recordio":
        from distface.data.recordio import write_recordio

        written = write_recordio(images, args.out, progress)
    else:
        from distface.data.tfrecord import write_tfrecord

        written = write_tfrecord(images, args.out, args.files, progress)
        written.append(written[0].parent / "property")
    return (f"{len(images)} images of {images.num_classes} identities -> {', '.join(map(str, written))}"
            f"{left_out(dict(bad))}")


def make_bin(args: argparse.Namespace, progress: Progress) -> str:
    from distface.data.binset import pack_bin

    pairs, problems = pack_bin(args.pairs_file, args.image_root, args.out, progress, args.bad_images, SKIP_HINT)
    return f"{pairs} pairs -> {args.out}{left_out(problems)}"


def align(args: argparse.Namespace, progress: Progress) -> str:
    from distface.align.folder import FAILED, NO_FACE, SEVERAL, align_folder

    size = tuple(int(side) for side in args.size.split("x"))
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {args.workers}")
    r = align_folder(args.raw_dir, args.aligned_dir, size, args.all, args.workers, args.ext, progress,
                     args.verbose)
    out = Path(args.aligned_dir)
    summary = f"aligned {r.aligned} of {r.images} images ({r.faces} faces) -> {out}"
    summary += f" | no face in {len(r.no_face)}" + (f" (listed in {out / NO_FACE})" if r.no_face else "")
    if r.several:
        kept = "kept every face, <name>_0 the largest" if args.all else "kept the largest"
        summary += f" | more than one face in {len(r.several)}: {kept} (listed in {out / SEVERAL})"
    return summary + (f" | {len(r.failed)} failed (listed in {out / FAILED})" if r.failed else "")


COMMANDS = {"pack": (pack, "packed"), "bin": (make_bin, "encoded"), "align": (align, "aligned")}


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    command, verb = COMMANDS[args.command]
    progress = Progress(verb, args.quiet)
    try:
        summary = command(args, progress)
    except (ValueError, OSError, ImportError) as err:
        progress.close()
        print(f"distface: {err}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

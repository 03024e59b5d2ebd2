"""distface eval --checkpoint RUN_DIR [--pairs pairs.txt --images ROOT] [--gallery N] [--plots DIR]

Re-evaluates the latest checkpoint of a training run on a pairs file (default: the run's eval section): the
verification figures, and 1:N identification on the set's images where their identities are known (the ORL
s31..s40 default: one gallery image per identity, the other nine as probes).
"""
import argparse
import sys

from distface.console import add_verbose, quiet_tensorflow


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="distface eval", description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", required=True, help="a run directory written by distface.train")
    p.add_argument("--pairs", help="LFW-format pairs file (default: the run's eval.pairs or its ORL pairs)")
    p.add_argument("--images", help="image root the pairs refer to (default: the run's eval.images or ORL)")
    p.add_argument("--no-flip", action="store_true", help="do not add the mirrored images' embeddings")
    p.add_argument("--gallery", type=int, default=1, help="gallery images per identity for identification")
    p.add_argument("--plots", help="folder to write roc.png and cmc.png into")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        from distface.training.checkpoint import load_backbone
        from distface.data.orl import orl_root
        from distface.eval.runner import load_verification_set, verification_set_from_config

        if args.gallery < 1:
            raise ValueError(f"--gallery: must be >= 1, got {args.gallery}")
        cfg, backbone, path = load_backbone(args.checkpoint)
        if args.no_flip:
            cfg.eval.flip = False
        size = cfg.model.image_size
        if args.pairs:
            vset = load_verification_set(args.pairs, args.images or cfg.eval.images or orl_root(), size)
        else:
            vset = verification_set_from_config(cfg.eval, size, args.checkpoint)
    except (ValueError, OSError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    from distface.eval.identification import format_identification, identification_report
    from distface.eval.runner import evaluate_backbone, format_result

    result, embeddings = evaluate_backbone(backbone, vset, cfg.eval)
    print(f"{path} | {format_result(vset.name, result)}")
    identified = None
    if len(set(vset.identities)) >= 2:
        identified = identification_report(embeddings, vset.identities, args.gallery)
        print(f"{path} | {vset.name} {format_identification(identified)}")
    if args.plots:
        from distface.eval.plots import cmc_curve_image, roc_curve_image, write_png

        written = [write_png(f"{args.plots}/roc.png", roc_curve_image(result, f"{vset.name} ROC"))]
        if identified is not None:
            written.append(write_png(f"{args.plots}/cmc.png", cmc_curve_image(identified, f"{vset.name} CMC")))
        print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m distface.eval --checkpoint RUN_DIR [--pairs pairs.txt --images ROOT]

Re-evaluates the latest checkpoint of a training run on a pairs file (default: the run's eval section).
"""
import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distface.eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run directory written by distface.train")
    p.add_argument("--pairs", help="LFW-format pairs file (default: the run's eval.pairs or its ORL pairs)")
    p.add_argument("--images", help="image root the pairs refer to (default: the run's eval.images or ORL)")
    p.add_argument("--no-flip", action="store_true", help="do not add the mirrored images' embeddings")
    args = p.parse_args(argv)
    try:
        from distface.checkpoint import load_backbone
        from distface.data.orl import orl_root
        from distface.eval.runner import load_verification_set, verification_set_from_config

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
    from distface.eval.runner import evaluate_backbone, format_result

    print(f"{path} | {format_result(vset.name, evaluate_backbone(backbone, vset, cfg.eval)[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Verification of a backbone on a pairs set: load the pair images once, embed, run the 10-fold protocol."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from distface.config import EvalConfig
from distface.data.pipeline import eval_images
from distface.data.orl import orl_root
from distface.eval.pairs import make_pairs, pair_image_paths, read_pairs, write_pairs
from distface.eval.verification import VerificationResult, evaluate


@dataclass(frozen=True)
class VerificationSet:
    name: str
    images: np.ndarray  # float32 [U, h, w, 3], each distinct image once
    index1: np.ndarray  # [P] rows of `images`
    index2: np.ndarray
    issame: np.ndarray  # bool [P]
    identities: tuple[str, ...] = ()  # per image, where known (pairs files): for the embedding projector


def orl_pairs_file(cfg: EvalConfig, directory: str | Path) -> Path:
    """Write the open-set ORL pairs (all same-identity pairs of cfg.identities + as many different ones)."""
    pairs = make_pairs({f"s{i}": 10 for i in cfg.identities}, seed=cfg.pairs_seed, num_folds=cfg.folds)
    path = Path(directory) / "pairs.txt"
    write_pairs(path, pairs, num_folds=cfg.folds)
    return path


def load_verification_set(pairs_file: str | Path, images_root: str | Path, image_size) -> VerificationSet:
    paths1, paths2, issame = pair_image_paths(Path(images_root), read_pairs(pairs_file))
    unique, inverse = np.unique(np.array(paths1 + paths2), return_inverse=True)
    images = eval_images(list(unique), tuple(image_size))
    n = len(paths1)
    return VerificationSet(Path(pairs_file).stem, images, inverse[:n], inverse[n:], np.asarray(issame, bool),
                           tuple(Path(p).parent.name for p in unique))


def verification_set_from_config(cfg: EvalConfig, image_size, out_dir: str | Path) -> VerificationSet:
    if cfg.pairs:
        return load_verification_set(cfg.pairs, cfg.images, image_size)
    return load_verification_set(orl_pairs_file(cfg, out_dir), cfg.images or orl_root(), image_size)


def verification_sets(cfg: EvalConfig, image_size, out_dir: str | Path) -> list[VerificationSet]:
    """The pairs set of the eval section (ORL pairs by default) and every insightface .bin set."""
    from distface.data.binset import load_bin_indexed

    sets = [verification_set_from_config(cfg, image_size, out_dir)]
    return sets + [VerificationSet(Path(p).stem, *load_bin_indexed(p, image_size)) for p in cfg.bin_sets]


def embed(backbone, images: np.ndarray, batch_size: int = 64, flip: bool = True) -> np.ndarray:
    """L2-normalised embeddings; with `flip`, of the sum of the image's and its mirror's embeddings. Computed by
    the export's own function (models.embedder.build_module), traced once: what is evaluated is what is deployed."""
    from distface.models.embedder import build_module

    module = build_module(backbone, images.shape[1:3], flip)  # a tf.function holds its module weakly
    out = [module.embed_float(tf.constant(images[start:start + batch_size]))["embeddings"].numpy()
           for start in range(0, len(images), batch_size)]
    return np.concatenate(out)


def evaluate_backbone(backbone, vset: VerificationSet, cfg: EvalConfig) -> tuple[VerificationResult, np.ndarray]:
    """The verification result and the L2-normalised embeddings of the set's images."""
    emb = embed(backbone, vset.images, cfg.batch_size, cfg.flip)
    return evaluate(emb[vset.index1], emb[vset.index2], vset.issame, num_folds=cfg.folds), emb


def format_result(name: str, r: VerificationResult) -> str:
    return (f"{name}: accuracy {100 * r.accuracy:.2f} ± {100 * r.accuracy_std:.2f} % | "
            f"VAL {100 * r.val:.2f} % @ FAR {100 * r.far:.2f} % | AUC {r.auc:.4f} | EER {100 * r.eer:.2f} % | "
            f"{r.num_pairs} pairs")

"""Evaluation during training: verify on every configured set (and, where the images' identities are known, 1:N
identification), print one line each, log TensorBoard scalars, the ROC and CMC curves, the embedding projector and
(2-D embeddings) the feature plane, and append a record to `<run>/eval.jsonl`.
Only the chief builds one (rank 0 speaks): other processes evaluate nothing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from distface.config import Config
from distface.eval.identification import format_identification, identification_report
from distface.eval.plots import cmc_curve_image, roc_curve_image
from distface.eval.runner import evaluate_backbone, format_result, verification_sets
from distface.eval.verification import DegenerateEmbeddings


class Evaluator:
    def __init__(self, cfg: Config, out_dir: str | Path, monitor):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.monitor = monitor
        self.sets = verification_sets(cfg.eval, cfg.model.image_size, self.out_dir)

    def __call__(self, backbone, step: int) -> list[dict]:
        records = []
        for vset in self.sets:
            try:
                result, embeddings = evaluate_backbone(backbone, vset, self.cfg.eval)
            except DegenerateEmbeddings as err:  # the run's checkpoints stay good: say so and go on
                self.monitor.say(f"eval step {step} | {vset.name}: not evaluated: {err}")
                records.append({"step": step, "pairs": vset.name, "error": str(err)})
                self._append(records[-1])
                continue
            self.monitor.say(f"eval step {step} | {format_result(vset.name, result)}")
            values = {"accuracy": result.accuracy, "val": result.val, "auc": result.auc, "eer": result.eer}
            self._image(f"roc/{vset.name}", roc_curve_image(result, f"{vset.name} ROC"), step)
            if vset.identities:
                self._visualize(backbone, vset, embeddings, step)
                identified = identification_report(embeddings, vset.identities)
                self.monitor.say(f"identify step {step} | {vset.name} {format_identification(identified)}")
                values.update(identified.scalars())
                self._image(f"cmc/{vset.name}", cmc_curve_image(identified, f"{vset.name} CMC"), step)
            self.monitor.scalars(step, {f"eval/{vset.name}/{k}": v for k, v in values.items()})
            records.append({"step": step, "pairs": vset.name, **dataclasses.asdict(result)})
            self._append(records[-1])
        return records

    def _append(self, record: dict) -> None:
        with open(self.out_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _image(self, tag: str, image: np.ndarray, step: int) -> None:
        from distface.eval.visualize import log_image

        if self.monitor.writer is not None:
            log_image(self.monitor.writer, tag, image, step)

    def _visualize(self, backbone, vset, embeddings, step: int) -> None:
        """Projector of the eval embeddings (identity labels, image sprite); for 2-D features the center-loss
        paper's feature-plane figure of the raw (unnormalised) features."""
        from distface.eval.visualize import feature_plane_image, write_projector

        write_projector(self.out_dir / "tb", vset.name, embeddings, vset.identities, vset.images, step)
        if self.cfg.model.embedding_size == 2:
            features = backbone(vset.images, training=False).numpy()
            names = sorted(set(vset.identities))
            labels = np.array([names.index(n) for n in vset.identities])
            self._image(f"features/{vset.name}", feature_plane_image(features, labels), step)


class NoEvaluation:
    """A non-chief process's evaluator."""

    def __call__(self, backbone, step: int) -> list[dict]:
        return []

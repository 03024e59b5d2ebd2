"""The GPU audit of one configuration, as a run builds it: the training step (distface.training.session.Session on
synthetic faces), the evaluation's embedding function and the export signature, traced on this CPU and read against the
GPU kernel registry of the `tensorflow` wheel (distface/ops/kernels.py).

Shared by tests/test_gpu_kernels.py (in-process engines) and, as a script, the engines that need a process of
their own: `python tests/gpu_audit.py --set train.strategy=horovod ...` prints the audit as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

SYNTHETIC = ["data.source=synthetic", "data.synthetic_identities=24", "data.synthetic_images_per_identity=4",
             "data.batch_size=8", "model.image_size=[56, 48]", "model.embedding_size=16", "train.steps=10"]


def audit(overrides) -> dict:
    """{"missing": [[op, types, where], ...], "device_to_host": [[traced function, producer, consumer, source],
    ...], "host_to_device": the step's count, "step_ops": the step's op types} over the step, the evaluation
    embedding and the export signature.
    A transfer's source is the distface function whose line made its producer ("tensorflow" if none did)."""
    from distface.checked_config import load_config
    from distface.models.embedder import build_module
    from distface.ops import kernels
    from distface.training.session import Session

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, SYNTHETIC + list(overrides) + [f"train.out_dir={out}/run"])
        session = Session(cfg, quiet=True)
        step = session.trainer.train_step.get_concrete_function(*next(session.dataset))
    module = build_module(session.state.backbone, cfg.model.image_size, flip=cfg.eval.flip)
    functions = {"step": step, "embed": module.embed_float.get_concrete_function(),
                 "export": module.embed_uint8.get_concrete_function()}
    missing, to_host, to_device = [], [], 0
    for name, function in functions.items():
        missing += [[f.op, f.types, f"{name}: {f.where}"] for f in kernels.missing_gpu_kernels(function)]
        for transfer in kernels.host_transfers(function):
            if transfer.direction == "device->host":
                to_host.append([name, transfer.producer, transfer.consumer, _source(function, transfer)])
            else:
                to_device += name == "step"
    graph_def = step.graph.as_graph_def()
    ops = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
    return {"missing": missing, "device_to_host": to_host, "host_to_device": to_device, "step_ops": sorted(ops)}


def _source(function, transfer) -> str:
    """"file.py:function" of the innermost distface frame that built the transfer's producer."""
    graph = function.graph
    if transfer.function != "step":
        graph = graph._functions[transfer.function].graph  # a nested function's own FuncGraph
    try:
        frames = graph.get_operation_by_name(transfer.producer.split()[-1]).traceback
    except KeyError:  # a function argument
        return "argument"
    ours = [f for f in frames if f"{os.sep}distface{os.sep}" in f.filename]
    return f"{os.path.basename(ours[-1].filename)}:{ours[-1].name}" if ours else "tensorflow"


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[])
    print(json.dumps(audit(parser.parse_args().set)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())

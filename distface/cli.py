"""The `distface` command: one entry point for everything a user runs, each subcommand the module that owns it.

Only the chosen subcommand's module is imported, and it parses its arguments before it imports TensorFlow, so
`distface --help` and `distface COMMAND --help` answer at once.
"""
from __future__ import annotations

import importlib
import sys

# name: (module whose main(argv) runs it, arguments put before the user's, one line of help)
COMMANDS = {
    "train": ("distface.train", (), "train a backbone and its head from a config (a YAML file or a shipped name)"),
    "eval": ("distface.eval.__main__", (), "evaluate a run's latest checkpoint: verification and identification"),
    "export": ("distface.serving.export", (), "export a run's backbone as a SavedModel, ONNX or TFLite, checked"),
    "embed": ("distface.serving.embed", (), "embed images with a run or an export"),
    "verify": ("distface.serving.verify", (), "say whether two photos show the same person"),
    "align": ("distface.data.__main__", ("align",), "detect faces and align them onto the ArcFace template"),
    "pack": ("distface.data.__main__", ("pack",), "pack an identity-folder tree into RecordIO or TFRecord"),
    "bin": ("distface.data.__main__", ("bin",), "make an insightface .bin verification set from a pairs file"),
    "figures": ("distface.figures", (), "the feature-space figures of the margin papers, on MNIST digits"),
    "models": ("distface.models.__main__", (), "parameters and GMACs of the backbones"),
    "plan": ("distface.plan", (), "will a config fit on N GPUs of M GiB: memory per GPU, steps, learning rate"),
    "launch": ("distface.launch.cli", (), "start training on GPUs or machines: Horovod, tf.distribute, SLURM"),
    "checkpoint": ("distface.checkpoint", (), "checkpoint tools: merge a sharded head into one array"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return ("usage: distface COMMAND [ARGS]    (distface COMMAND --help: its arguments)\n\n"
            "Distributed face-recognition training on TensorFlow 2 and Horovod.\n\ncommands:\n" + "\n".join(lines) +
            "\n\nTensorFlow's own log lines are hidden; --verbose on a command shows them.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"distface: unknown command {name!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module, fixed, _ = COMMANDS[name]
    return importlib.import_module(module).main([*fixed, *rest])

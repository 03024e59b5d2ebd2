"""How distface processes are started: Horovod ranks, tf.distribute workers (TF_CONFIG, SLURM), one process.
No training logic lives here; `distface launch --help` lists the options."""

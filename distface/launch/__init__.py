"""How distface processes are started: Horovod ranks, tf.distribute workers (TF_CONFIG, SLURM), one process.
No training logic lives here; `python -m launch --help` lists the options."""

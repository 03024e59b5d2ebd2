"""The one error type of the launcher: bad options, hosts or SLURM variables, reported as one line."""


class LaunchError(ValueError):
    """A launcher input that cannot work; the message names the option or variable."""

"""`python -m launch` from a checkout: the same as `distface launch` (distface.launch)."""

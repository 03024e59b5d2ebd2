"""Serving: a run or an export as one embedding model (inference.py), image files for it (images.py), and the
export, embed and verify commands. It sits above training; nothing in training imports it (docs/design.md)."""

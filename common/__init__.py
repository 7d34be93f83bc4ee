"""Shared boilerplate for the experiment scripts: data, models, command line, metrics.

Nothing in this package is part of any training idea. The losses, the local
students, the synthetic-gradient modules and the training loops live in the
scripts themselves, where a reader can see them.
"""
